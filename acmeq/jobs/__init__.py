"""acmeq's own jobs, one module per domain; every function here is declared with ``@job``.

The registry imports every module of this package, so a new module is picked up by itself.
"""
