-- Releases are targets of the server's TUF repository (--tuf-repo), signed offline; the table of
-- uploaded, key-signed packages goes. Their artifacts under DATA/packages/ are left for the
-- operator to remove.
DROP TABLE packages;
