-- Run once by the image's entrypoint, when it initialises an empty data directory, in the
-- database named by the postgres_db secret. pgvector is installed in the image but each
-- database must create the extension.
CREATE EXTENSION IF NOT EXISTS vector;
