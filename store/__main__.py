"""`python -m store`: migrate, then seed the demo organisation on an empty database."""

from store.db import migrate
from store.demo import main

migrate()
main()
