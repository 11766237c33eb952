"""`python -m shopstream_generator`: the same as `shopstream-generate`."""

from .cli import main

main()
