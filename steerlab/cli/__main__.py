from steerlab.cli.main import main

raise SystemExit(main())
