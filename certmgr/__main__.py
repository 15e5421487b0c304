from certmgr.cli.main import main

main()
