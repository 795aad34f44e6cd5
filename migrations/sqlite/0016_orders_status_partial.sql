-- Orders by status, for the queues that look for unfinished orders
-- (expired, to resume, awaiting approval). A valid order is final and no
-- queue looks for it, so it is left out: a REST order issued at once is
-- valid when it is written and no longer writes to this index, one B-tree
-- fewer in every issuance's commit (docs/BENCHMARKS.md). Queries that
-- want this index say `status <> 'valid'` in their WHERE, which is how
-- SQLite knows a partial index answers them.
DROP INDEX orders_status;
CREATE INDEX orders_status ON orders (status, created_at) WHERE status <> 'valid';
