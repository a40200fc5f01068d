from crosslogic.cli import main

raise SystemExit(main())
