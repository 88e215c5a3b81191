//! Post-data, sorted for the run: each table's indexes and constraints (built as soon as its
//! rows are in), the constraints built as indexes and attached afterwards, foreign keys (in
//! parallel once every index exists), and everything else in dump order. This tool's own
//! publications, which the source's dump contains because the copy runs while they exist, are
//! left out: the target must not get them.

use std::collections::{HashMap, HashSet};

use crate::catalog::Catalog;
use crate::filter::QualName;
use crate::schema::{DumpEntry, ParsedDump};

/// A post-data item or any other statement the pool runs on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// Bookkeeping key; `None` for work that is not recorded (ANALYZE).
    pub key: Option<String>,
    pub label: String,
    pub sql: String,
    /// Estimated build cost: a table's costliest indexes start first.
    pub cost: u64,
    /// A plain index (SHARE lock: builds alongside others on its table).
    pub is_index: bool,
}

/// Post-data items sorted for the run.
#[derive(Debug, Default)]
pub(crate) struct Classified {
    /// Each table's indexes and constraints, built as soon as its rows are in.
    pub by_table: HashMap<QualName, Vec<Statement>>,
    /// `ADD CONSTRAINT … USING INDEX` for the constraints built as indexes beside the others;
    /// run before the foreign keys.
    pub attach: Vec<Statement>,
    /// Foreign keys, in parallel once every table's indexes exist.
    pub foreign_keys: Vec<Statement>,
    /// Everything else, in the dump's order.
    pub rest: Vec<Statement>,
}

impl Classified {
    pub fn len(&self) -> usize {
        self.by_table.values().map(Vec::len).sum::<usize>()
            + self.attach.len()
            + self.foreign_keys.len()
            + self.rest.len()
    }
}

/// Whether `name` is one of this tool's publication names (`seren_` and 12 hex digits).
fn is_our_publication(name: &str) -> bool {
    name.strip_prefix("seren_").is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether a dump entry creates or describes one of this tool's publications.
fn is_ours(e: &DumpEntry) -> bool {
    let first = e.tag.split(' ').next().unwrap_or("");
    match e.kind.as_str() {
        "PUBLICATION" | "PUBLICATION TABLE" | "PUBLICATION TABLES IN SCHEMA" => {
            is_our_publication(first)
        }
        "COMMENT" | "SECURITY LABEL" => e
            .tag
            .strip_prefix("PUBLICATION ")
            .is_some_and(is_our_publication),
        _ => false,
    }
}

/// The bookkeeping key of a dump entry: its kind, schema and tag, and a digest of its
/// statements (two entries can share a tag, e.g. default privileges of two roles). It does not
/// depend on the entry's position, so a resume under a new snapshot, whose dump may hold an
/// entry more or less, still recognises what the interrupted run applied. Comment and blank
/// lines are left out of the digest: which of them follow an entry depends on what comes after
/// it (the last entry carries the dump's closing comment).
fn item_key(e: &DumpEntry) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for line in e.sql.lines() {
        let t = line.trim();
        if !t.is_empty() && !t.starts_with("--") {
            h.update(t.as_bytes());
            h.update(b"\n");
        }
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("post:{}:{}:{}:{hex}", e.kind, e.schema, e.tag)
}

/// Split post-data into: items bound to one table (indexes, constraints), foreign keys, and
/// everything else in dump order. Items an interrupted run finished are dropped.
pub(crate) fn classify(post: &ParsedDump, catalog: &Catalog, done: &HashSet<String>) -> Classified {
    let mut out = Classified::default();
    // Tables with plain indexes to build: a primary key or unique constraint of theirs is built
    // as an index beside them (a SHARE lock) instead of before them (ADD CONSTRAINT's ACCESS
    // EXCLUSIVE lock would wait for every index build on the table), and attached afterwards.
    let indexed: HashSet<&QualName> = post
        .entries
        .iter()
        .filter(|e| e.kind == "INDEX")
        .filter_map(|e| {
            catalog
                .indexes
                .get(&(e.schema.clone(), e.tag.clone()))
                .map(|i| &i.table)
        })
        .collect();
    for e in &post.entries {
        if is_ours(e) {
            continue;
        }
        let key = item_key(e);
        if done.contains(&key) {
            continue;
        }
        let lookup = (e.schema.clone(), e.tag.clone());
        // A constraint's index usually bears the constraint's name (the tag's last word).
        let index_name = if e.kind == "INDEX" {
            e.tag.as_str()
        } else {
            e.tag.rsplit(' ').next().unwrap_or("")
        };
        let cost = catalog
            .indexes
            .get(&(e.schema.clone(), index_name.to_owned()))
            .map_or(0, |i| i.build_cost);
        let label = format!("{} {}.{}", e.kind.to_lowercase(), e.schema, e.tag);
        let item = Statement {
            key: Some(key.clone()),
            label: label.clone(),
            sql: e.sql.clone(),
            cost,
            is_index: e.kind == "INDEX",
        };
        let table = match e.kind.as_str() {
            "INDEX" => catalog.indexes.get(&lookup).map(|i| &i.table),
            "CONSTRAINT" | "CHECK CONSTRAINT" => catalog.constraint_tables.get(&lookup),
            _ => None,
        };
        let separable = (e.kind == "CONSTRAINT")
            .then(|| catalog.separable_constraints.get(&lookup))
            .flatten()
            .filter(|_| table.is_some_and(|t| indexed.contains(t)));
        match (e.kind.as_str(), table, separable) {
            (_, Some(t), Some(sep)) => {
                let index_key = format!("{key}:index");
                if !done.contains(&index_key) {
                    out.by_table.entry(t.clone()).or_default().push(Statement {
                        key: Some(index_key),
                        label: format!("{label} (its index)"),
                        sql: sep.index_sql.clone(),
                        cost,
                        is_index: true,
                    });
                }
                out.attach.push(Statement {
                    key: Some(key),
                    label,
                    sql: sep.attach_sql.clone(),
                    cost: 0,
                    is_index: false,
                });
            }
            (_, Some(t), None) => out.by_table.entry(t.clone()).or_default().push(item),
            ("FK CONSTRAINT", None, _) => out.foreign_keys.push(item),
            _ => out.rest.push(item),
        }
    }
    // Constraints first: ADD PRIMARY KEY/UNIQUE takes an ACCESS EXCLUSIVE lock that would
    // wait for any index build on the table. Then indexes, costliest first.
    for items in out.by_table.values_mut() {
        items.sort_by_key(|i| (i.is_index, std::cmp::Reverse(i.cost)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Index;
    use crate::schema::parse_dump;

    const DUMP: &str = "SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);

--
-- Name: t_b; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX t_b ON public.t USING btree (b);

--
-- Name: u u_fk; Type: FK CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.u ADD CONSTRAINT u_fk FOREIGN KEY (t) REFERENCES public.t(id);

--
-- Name: app_pub; Type: PUBLICATION; Schema: -; Owner: postgres
--

CREATE PUBLICATION app_pub WITH (publish = 'insert');

--
-- Name: seren_0123456789ab; Type: PUBLICATION; Schema: -; Owner: postgres
--

CREATE PUBLICATION seren_0123456789ab WITH (publish = 'insert, update, delete, truncate');

--
-- Name: PUBLICATION seren_0123456789ab; Type: COMMENT; Schema: -; Owner: postgres
--

COMMENT ON PUBLICATION seren_0123456789ab IS 'postgres-seren-replicator: replication into x';

--
-- Name: seren_0123456789ab t; Type: PUBLICATION TABLE; Schema: public; Owner: postgres
--

ALTER PUBLICATION seren_0123456789ab ADD TABLE ONLY public.t;
";

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        let t = QualName::new("public", "t");
        c.indexes.insert(
            ("public".into(), "t_b".into()),
            Index {
                table: t.clone(),
                build_cost: 7,
            },
        );
        c.constraint_tables
            .insert(("public".into(), "t t_pkey".into()), t);
        c
    }

    #[test]
    fn our_publications_stay_on_the_source_and_the_users_go_to_the_target() {
        let c = classify(&parse_dump(DUMP), &catalog(), &HashSet::new());
        let rest: Vec<&str> = c.rest.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(rest, ["publication -.app_pub"]);
        assert!(c.rest.iter().all(|i| !i.sql.contains("seren_")));
        assert_eq!(c.foreign_keys.len(), 1);
        let t = &c.by_table[&QualName::new("public", "t")];
        // The key before the index (its ACCESS EXCLUSIVE lock would wait for the build).
        assert!(t[0].label.starts_with("constraint "));
        assert!(t[1].is_index);
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn finished_items_are_left_out() {
        let all = classify(&parse_dump(DUMP), &catalog(), &HashSet::new());
        let done: HashSet<String> = all
            .foreign_keys
            .iter()
            .filter_map(|i| i.key.clone())
            .collect();
        let again = classify(&parse_dump(DUMP), &catalog(), &done);
        assert!(again.foreign_keys.is_empty());
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn keys_do_not_depend_on_what_follows_an_entry() {
        // The same foreign key, once followed by a publication and once last in the dump.
        let fk = "--\n-- Name: u u_fk; Type: FK CONSTRAINT; Schema: public; Owner: postgres\n--\n\n\
                  ALTER TABLE ONLY public.u ADD CONSTRAINT u_fk FOREIGN KEY (t) REFERENCES public.t(id);\n\n\n";
        let before_pub = format!(
            "{fk}--\n-- Name: p; Type: PUBLICATION; Schema: -; Owner: postgres\n--\n\nCREATE PUBLICATION p;\n"
        );
        let last = format!("{fk}--\n-- PostgreSQL database dump complete\n--\n\n");
        let a = parse_dump(&before_pub);
        let b = parse_dump(&last);
        assert_ne!(a.entries[0].sql, b.entries[0].sql);
        assert_eq!(item_key(&a.entries[0]), item_key(&b.entries[0]));
    }

    #[test]
    fn publication_names_are_recognised_exactly() {
        assert!(is_our_publication("seren_0123456789ab"));
        assert!(!is_our_publication("seren_0123456789AB"));
        assert!(!is_our_publication("seren_012345"));
        assert!(!is_our_publication("serenity_pub"));
    }
}
