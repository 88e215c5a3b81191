-- The mixed benchmark set (~10 GB with SCALE 1.0): 300 small tables, four medium ones and one
-- large table with jsonb under a GIN index and TOASTed text. psql variable: scale (default 1).
\if :{?scale}
\else
\set scale 1
\endif
SET synchronous_commit = off;

-- 300 small tables of 5,000 rows each (~0.5 MB), each with its primary key.
SELECT format($f$
  CREATE TABLE small_%s (id int PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2), seen timestamptz);
  INSERT INTO small_%s SELECT g, 'item ' || g, g %% 97, (g * 1.25)::numeric(10,2), timestamptz '2026-01-01' + g * interval '1 minute'
  FROM generate_series(1, 5000) g;$f$, n, n)
FROM generate_series(1, 300) n
\gexec

-- Four medium tables (~0.5 GB each at scale 1): a key and a secondary btree.
SELECT format($f$
  CREATE TABLE orders_%1$s (id bigint PRIMARY KEY, customer int NOT NULL, status text NOT NULL, amount numeric(12,2),
                            created timestamptz NOT NULL, note text);
  INSERT INTO orders_%1$s SELECT g, (g * 7919) %% 200000, (ARRAY['new','paid','shipped','returned'])[1 + g %% 4],
         ((g %% 100000) / 100.0)::numeric(12,2), timestamptz '2025-01-01' + g * interval '1 second',
         'order note ' || md5(g::text)
  FROM generate_series(1::bigint, %2$s) g;
  CREATE INDEX orders_%1$s_customer ON orders_%1$s (customer, created);$f$, n, (5000000 * :scale)::bigint)
FROM generate_series(1, 4) n
\gexec

-- The large table (~7 GB at scale 1): a jsonb document under GIN and an incompressible 2.5 kB
-- text stored out of line in TOAST.
CREATE TABLE events (
  id bigint PRIMARY KEY,
  kind text NOT NULL,
  doc jsonb NOT NULL,
  payload text NOT NULL,
  at timestamptz NOT NULL
);
INSERT INTO events
SELECT g, (ARRAY['click','view','buy','error','login'])[1 + g % 5],
       jsonb_build_object('user', 'u' || (g % 50000), 'n', g, 'tags', jsonb_build_array('t' || (g % 13), 't' || (g % 29)),
                          'ok', g % 3 = 0),
       (SELECT string_agg(md5(g::text || ':' || k), '') FROM generate_series(1, 80) k),
       timestamptz '2026-06-01' + g * interval '10 ms'
FROM generate_series(1, (2400000 * :scale)::bigint) g;
CREATE INDEX events_doc ON events USING gin (doc);
CREATE INDEX events_at ON events (at);
VACUUM ANALYZE;
