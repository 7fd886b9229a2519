from rlhflab.cli import main

raise SystemExit(main())
