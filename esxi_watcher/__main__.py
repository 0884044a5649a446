from esxi_watcher.cli import main

raise SystemExit(main())
