"""certmgr: keeps the WBM HTTPS certificates of OpenStage / OpenScape Desk Phones valid and verified."""

__version__ = "0.1.0"
