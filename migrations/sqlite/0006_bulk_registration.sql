-- PostgreSQL drops two foreign keys here (see migrations/postgres/0006_bulk_registration.sql);
-- SQLite checks them with an index probe per row and keeps them. This file keeps the two
-- migration histories numbered alike.
SELECT 1;
