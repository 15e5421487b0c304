from certmgr.cli.main import main

# Guarded: worker processes started with "spawn" (certmgr.pki.keypool) re-import the main module.
if __name__ == "__main__":
    main()
