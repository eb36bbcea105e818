from acmeq.cli import main

main()
