#!/bin/sh
# Mounted at /usr/local/bin/postgres, which comes before the server's own directory on the
# image's PATH: the image's entrypoint ends with `exec postgres ...` and runs this instead.
#
# To set up an empty data directory, the entrypoint exports POSTGRES_PASSWORD, read from
# POSTGRES_PASSWORD_FILE, and the server would inherit it: the password would sit in the
# environment of the server and of every process it starts, where trusted PL/Perl's %ENV
# shows it to any role. Once the cluster exists the server has no use for it.
unset POSTGRES_PASSWORD
exec "/usr/lib/postgresql/${PG_MAJOR:?the image sets PG_MAJOR}/bin/postgres" "$@"
