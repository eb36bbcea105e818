"""The payment webhook receiver: an ASGI app (:mod:`acmeq.web.app`), one verifier per provider.

A request is verified synchronously (:mod:`acmeq.web.stripe`, :mod:`acmeq.web.mollie`,
:mod:`acmeq.web.paypal`), recorded durably in SQL and handed to ``process_payment_webhook`` on the
``payments`` queue (:mod:`acmeq.web.intake`) before the provider gets its 2xx.
"""
