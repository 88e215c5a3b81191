//! The source database's own properties, which live in shared catalogs and so are in no dump of
//! its contents: its owner, comment, connection limit, privileges (`GRANT CONNECT`, `REVOKE
//! TEMPORARY … FROM PUBLIC`) and the settings its sessions start with (`ALTER DATABASE … SET`,
//! `ALTER ROLE … IN DATABASE … SET`). `pg_dump --create` writes them; a copy that left them out
//! would hand the application another `search_path`, `DateStyle` or `statement_timeout` after
//! the switch, or let roles connect that could not before.
//!
//! They are given to the target database once its copy is complete, not before: a database-wide
//! `statement_timeout` or `default_transaction_read_only` must not reach the sessions that
//! restore and index it. Every statement is idempotent, so a resumed run gives them again.

use tokio_postgres::Client;

use crate::error::{Error, Result, Side};
use crate::sql::{ident, literal};

/// One privilege on the database.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// Which entry of the ACL it is part of (its position, from 1).
    entry: i64,
    /// `None`: PUBLIC.
    grantee: Option<String>,
    /// `CONNECT`, `CREATE` or `TEMPORARY`.
    privilege: String,
    grantable: bool,
}

/// A setting sessions in the database start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// `None`: every role (`ALTER DATABASE … SET`); else `ALTER ROLE … IN DATABASE … SET`.
    pub role: Option<String>,
    /// The entry as the catalog stores it: `name=value`.
    pub entry: String,
}

/// What the source database has of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties {
    /// Its owner.
    pub owner: String,
    comment: Option<String>,
    /// `-1`: no limit.
    connection_limit: i32,
    /// `None`: the default privileges (owner: all; PUBLIC: CONNECT and TEMPORARY).
    acl: Option<Vec<Grant>>,
    settings: Vec<Setting>,
}

/// How the properties are given to the target database.
#[derive(Debug, Clone, Copy)]
pub struct Apply<'a> {
    /// The target database.
    pub database: &'a str,
    /// Its owner now.
    pub owner: &'a str,
    /// Give it the source's owner (only a database this run created; not with `--no-owner`).
    pub set_owner: bool,
    /// Leave the privileges out (`--no-privileges`).
    pub no_privileges: bool,
}

/// The settings whose values are lists of names quoted one by one (`GUC_LIST_QUOTE`), as
/// pg_dump knows them: their stored value must be split and each element given as a literal.
const LIST_SETTINGS: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// Read the properties of the database `source` is connected to. The catalogs read
/// (`pg_database`, `pg_db_role_setting`, `pg_shdescription`) are readable by every role.
///
/// # Errors
/// [`Error::Sql`].
pub async fn read(source: &Client) -> Result<Properties> {
    let fail = |e| Error::sql(Side::Source, "read the database's own properties", e);
    let row = source
        .query_one(
            "SELECT pg_get_userbyid(d.datdba)::text, shobj_description(d.oid, 'pg_database'),
                    d.datconnlimit, d.datacl IS NULL
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(fail)?;
    let default_acl: bool = row.get(3);
    let acl = if default_acl {
        None
    } else {
        let grants = source
            .query(
                "SELECT i.n, CASE WHEN a.grantee = 0 THEN NULL
                                  ELSE pg_get_userbyid(a.grantee)::text END,
                        a.privilege_type, a.is_grantable
                 FROM pg_database d, unnest(d.datacl) WITH ORDINALITY AS i(item, n),
                      aclexplode(ARRAY[i.item]) a
                 WHERE d.datname = current_database()
                 ORDER BY i.n, a.privilege_type",
                &[],
            )
            .await
            .map_err(fail)?;
        Some(
            grants
                .iter()
                .map(|r| Grant {
                    entry: r.get(0),
                    grantee: r.get(1),
                    privilege: r.get(2),
                    grantable: r.get(3),
                })
                .collect(),
        )
    };
    let settings = source
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole)::text END,
                    e.entry
             FROM pg_db_role_setting s
             JOIN pg_database d ON d.oid = s.setdatabase AND d.datname = current_database()
             CROSS JOIN LATERAL unnest(s.setconfig) WITH ORDINALITY AS e(entry, n)
             ORDER BY s.setrole <> 0, 1, e.n",
            &[],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|r| Setting {
            role: r.get(0),
            entry: r.get(1),
        })
        .collect();
    Ok(Properties {
        owner: row.get(0),
        comment: row.get(1),
        connection_limit: row.get(2),
        acl,
        settings,
    })
}

/// Split the stored value of a list setting into its elements: comma-separated, each either a
/// double-quoted name (`""` inside it one quote) or a run of characters without a comma or
/// white space. `None` when the value does not parse (the caller then gives it whole).
fn split_list(value: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = value.trim_start().chars().peekable();
    if chars.peek().is_none() {
        return Some(out);
    }
    loop {
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                name.push(c);
                chars.next();
            }
            if name.is_empty() {
                return None;
            }
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        out.push(name);
        match chars.next() {
            None => return Some(out),
            Some(',') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(_) => return None,
        }
    }
}

/// `SET name TO value` for a stored `name=value` entry, values quoted as literals (each element
/// of a list setting on its own). `None` for an entry without `=`.
fn set_clause(entry: &str) -> Option<String> {
    let (name, value) = entry.split_once('=')?;
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        match split_list(value) {
            Some(items) if items.is_empty() => literal(""),
            Some(items) => items
                .iter()
                .map(|i| literal(i))
                .collect::<Vec<_>>()
                .join(", "),
            None => literal(value),
        }
    } else {
        literal(value)
    };
    Some(format!("SET {} TO {value}", ident(name)))
}

impl Properties {
    /// Whether the database has settings of its own.
    pub fn has_settings(&self) -> bool {
        !self.settings.is_empty()
    }

    /// The statements that give these properties, but the owner and the connection limit, to
    /// the target database whose owner is `to.owner`, each with what it does (for a warning
    /// when it fails). `keep_create`: the target role may create in the database now, and must
    /// still after the privileges are copied (its subscription needs it from 16, a later run
    /// its bookkeeping schema).
    fn statements(&self, to: &Apply<'_>, keep_create: bool) -> Vec<(String, String)> {
        let db = ident(to.database);
        let owner = to.owner;
        let mut out = Vec::new();
        if let Some(comment) = &self.comment {
            out.push((
                format!("COMMENT ON DATABASE {db} IS {}", literal(comment)),
                "copy the database's comment".to_owned(),
            ));
        }
        if let (Some(acl), false) = (&self.acl, to.no_privileges) {
            // One implicit transaction, which ends by making sure that the target role keeps
            // what it needs: the owner is never left without CONNECT, and if a statement takes
            // that away, the whole ACL is left as it was (with a warning).
            let mut sql = self.acl_statements(acl, &db, owner);
            let mut needs = vec!["CONNECT"];
            if keep_create {
                needs.push("CREATE");
            }
            for privilege in needs {
                sql.push(format!(
                    "DO $seren$BEGIN IF NOT has_database_privilege(current_database(), '{privilege}') \
                     THEN RAISE EXCEPTION 'the target role would lose {privilege} on the database'; \
                     END IF; END$seren$"
                ));
            }
            out.push((
                sql.join(";\n"),
                "copy the privileges on the database".to_owned(),
            ));
        }
        for s in &self.settings {
            let Some(set) = set_clause(&s.entry) else {
                continue;
            };
            match &s.role {
                None => out.push((
                    format!("ALTER DATABASE {db} {set}"),
                    format!("copy the database's setting {}", s.entry),
                )),
                Some(role) => out.push((
                    format!("ALTER ROLE {} IN DATABASE {db} {set}", ident(role)),
                    format!(
                        "copy the setting {} of role {role} in the database",
                        s.entry
                    ),
                )),
            }
        }
        out
    }

    /// GRANTs and REVOKEs that turn a database's default privileges into `acl`, entry by
    /// entry in the source's order (so that the two ACLs read alike); the source owner's
    /// entry becomes `owner`'s, who may re-grant to itself what it revoked (an owner always
    /// holds the grant options). They are given by the target role, not by the source's
    /// grantors.
    fn acl_statements(&self, acl: &[Grant], db: &str, owner: &str) -> Vec<String> {
        let mut out = vec![
            format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"),
            format!("REVOKE ALL ON DATABASE {db} FROM {}", ident(owner)),
        ];
        let mut entries: Vec<i64> = acl.iter().map(|g| g.entry).collect();
        entries.dedup();
        for entry in entries {
            let of_entry: Vec<&Grant> = acl.iter().filter(|g| g.entry == entry).collect();
            let grantee = match of_entry[0].grantee.as_deref() {
                None => "PUBLIC".to_owned(),
                Some(g) if g == self.owner => ident(owner),
                Some(g) => ident(g),
            };
            for grantable in [false, true] {
                let privileges: Vec<&str> = of_entry
                    .iter()
                    .filter(|g| g.grantable == grantable)
                    .map(|g| g.privilege.as_str())
                    .collect();
                if !privileges.is_empty() {
                    out.push(format!(
                        "GRANT {} ON DATABASE {db} TO {grantee}{}",
                        privileges.join(", "),
                        if grantable { " WITH GRANT OPTION" } else { "" }
                    ));
                }
            }
        }
        out
    }
}

/// Run one statement of this module on the target: `Some` warning when the target refuses it
/// (a role it lacks, a setting it does not know or that only a superuser may give), an error
/// only when the connection is gone (the step is then retried whole).
async fn give(target: &Client, sql: &str, what: &str) -> Result<Option<String>> {
    match target.batch_execute(sql).await {
        Ok(()) => Ok(None),
        Err(e) if e.as_db_error().is_none() => Err(Error::sql(Side::Target, what, e)),
        Err(e) => Ok(Some(format!(
            "could not {what} on the target ({}): run `{sql}` there as a role that may",
            crate::error::pg_message(&e)
        ))),
    }
}

/// Give `props`, but the connection limit ([`apply_connection_limit`]), to the target database
/// through `target` (a session on it); returns a warning for each statement the target refused.
///
/// # Errors
/// [`Error::Sql`] without a server error (the connection is gone).
pub async fn apply(target: &Client, props: &Properties, to: &Apply<'_>) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    if to.set_owner && props.owner != to.owner {
        // A role that is not a superuser keeps what an owner may do only through the new
        // owner's privileges (membership with INHERIT): without them it would lock itself out.
        let keeps: bool = target
            .query_one(
                "SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
                     OR coalesce((SELECT pg_has_role(current_user, oid, 'USAGE')
                                  FROM pg_roles WHERE rolname = $1), false)",
                &[&props.owner],
            )
            .await
            .map_err(|e| Error::sql(Side::Target, "check the right to give the database away", e))?
            .get(0);
        let sql = format!(
            "ALTER DATABASE {} OWNER TO {}",
            ident(to.database),
            ident(&props.owner)
        );
        if keeps {
            let what = format!("give the database to {}", props.owner);
            warnings.extend(give(target, &sql, &what).await?);
        } else {
            warnings.push(format!(
                "the target database stays with {}: the source's belongs to {}, whose privileges \
                 the target role does not have (it would lose its own over the database); run \
                 `{sql}` there as a superuser",
                to.owner, props.owner
            ));
        }
    }
    // The privileges the source's owner holds go to whoever owns the target now.
    let now = owner(target).await?;
    let keep_create: bool = target
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "read the privileges on the database", e))?
        .get(0);
    let to = Apply { owner: &now, ..*to };
    for (sql, what) in props.statements(&to, keep_create) {
        warnings.extend(give(target, &sql, &what).await?);
    }
    Ok(warnings)
}

/// Take back the settings of `props` on the target database (`ALTER … RESET`): a session can
/// no longer start there under them (a `session_preload_libraries` the target server lacks).
/// One the target refuses (a role it lacks) was never given.
///
/// # Errors
/// [`Error::Sql`] without a server error (the connection is gone).
pub async fn reset_settings(target: &Client, props: &Properties, database: &str) -> Result<()> {
    let db = ident(database);
    for s in &props.settings {
        let Some((name, _)) = s.entry.split_once('=') else {
            continue;
        };
        let sql = match &s.role {
            None => format!("ALTER DATABASE {db} RESET {}", ident(name)),
            Some(role) => format!(
                "ALTER ROLE {} IN DATABASE {db} RESET {}",
                ident(role),
                ident(name)
            ),
        };
        give(target, &sql, "take back the database's settings").await?;
    }
    Ok(())
}

/// `ALTER DATABASE … CONNECTION LIMIT` of `props`, for the target database `database`; `None`
/// when the source's has none.
fn connection_limit_sql(props: &Properties, database: &str) -> Option<String> {
    (props.connection_limit != -1).then(|| {
        format!(
            "ALTER DATABASE {} CONNECTION LIMIT {}",
            ident(database),
            props.connection_limit
        )
    })
}

/// Give the target database the source's connection limit, if it has one: last, once no more
/// of this run's sessions are needed to give the rest. A warning when the target refuses it.
///
/// # Errors
/// [`Error::Sql`] without a server error (the connection is gone).
pub async fn apply_connection_limit(
    target: &Client,
    props: &Properties,
    database: &str,
) -> Result<Option<String>> {
    match connection_limit_sql(props, database) {
        Some(sql) => give(target, &sql, "copy the database's connection limit").await,
        None => Ok(None),
    }
}

/// The owner of the database `target` is connected to.
///
/// # Errors
/// [`Error::Sql`].
pub async fn owner(target: &Client) -> Result<String> {
    target
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| Error::sql(Side::Target, "read the target database's owner", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(acl: Option<Vec<Grant>>, settings: Vec<Setting>) -> Properties {
        Properties {
            owner: "app".into(),
            comment: Some("it's the shop".into()),
            connection_limit: 50,
            acl,
            settings,
        }
    }

    /// The statements' SQL, for a target role that need not keep CREATE.
    fn sql_of(p: &Properties, to: &Apply<'_>) -> Vec<String> {
        p.statements(to, false)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    fn grant(entry: i64, grantee: Option<&str>, privilege: &str, grantable: bool) -> Grant {
        Grant {
            entry,
            grantee: grantee.map(str::to_owned),
            privilege: privilege.into(),
            grantable,
        }
    }

    #[test]
    fn list_settings_split_as_the_server_wrote_them() {
        assert_eq!(
            split_list(r#"app, "$user", public, "Odd ""Schema""""#).unwrap(),
            ["app", "$user", "public", r#"Odd "Schema""#]
        );
        assert_eq!(split_list(r#""""#).unwrap(), [""]);
        assert_eq!(split_list("").unwrap(), Vec::<String>::new());
        assert_eq!(split_list("a,b").unwrap(), ["a", "b"]);
        assert!(split_list(r#""open"#).is_none());
        assert!(split_list("a b").is_none());
        assert_eq!(
            set_clause(r#"search_path=app, "$user""#).unwrap(),
            r#"SET "search_path" TO 'app', '$user'"#
        );
        // Not a list: one literal, commas and all.
        assert_eq!(
            set_clause("DateStyle=SQL, DMY").unwrap(),
            r#"SET "DateStyle" TO 'SQL, DMY'"#
        );
        assert_eq!(
            set_clause("app.note=it's").unwrap(),
            r#"SET "app.note" TO 'it''s'"#
        );
        assert_eq!(
            set_clause("search_path=").unwrap(),
            r#"SET "search_path" TO ''"#
        );
        assert!(set_clause("broken").is_none());
    }

    #[test]
    fn the_sources_privileges_replace_the_defaults_entry_by_entry() {
        let acl = vec![
            grant(1, Some("ro"), "CONNECT", true),
            grant(1, Some("ro"), "TEMPORARY", false),
            grant(2, Some("app"), "CONNECT", false),
            grant(2, Some("app"), "CREATE", false),
            grant(2, Some("app"), "TEMPORARY", false),
            grant(3, None, "CONNECT", false),
        ];
        let p = props(Some(acl), vec![]);
        let to = Apply {
            database: "shop copy",
            owner: "app",
            set_owner: true,
            no_privileges: false,
        };
        let sql = sql_of(&p, &to);
        assert_eq!(
            sql[0],
            r#"COMMENT ON DATABASE "shop copy" IS 'it''s the shop'"#
        );
        assert_eq!(
            connection_limit_sql(&p, "shop copy").unwrap(),
            r#"ALTER DATABASE "shop copy" CONNECTION LIMIT 50"#
        );
        let sql: Vec<&str> = sql[1].split(";\n").collect();
        assert_eq!(
            sql,
            [
                r#"REVOKE ALL ON DATABASE "shop copy" FROM PUBLIC"#,
                r#"REVOKE ALL ON DATABASE "shop copy" FROM "app""#,
                r#"GRANT TEMPORARY ON DATABASE "shop copy" TO "ro""#,
                r#"GRANT CONNECT ON DATABASE "shop copy" TO "ro" WITH GRANT OPTION"#,
                r#"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "shop copy" TO "app""#,
                r#"GRANT CONNECT ON DATABASE "shop copy" TO PUBLIC"#,
                "DO $seren$BEGIN IF NOT has_database_privilege(current_database(), 'CONNECT') \
                 THEN RAISE EXCEPTION 'the target role would lose CONNECT on the database'; \
                 END IF; END$seren$",
            ]
        );
        // Another owner on the target: the source owner's entry becomes its.
        let to = Apply {
            owner: "migrator",
            set_owner: false,
            ..to
        };
        let acl = &p.statements(&to, true)[1].0;
        let sql: Vec<&str> = acl.split(";\n").collect();
        assert_eq!(
            sql[1],
            r#"REVOKE ALL ON DATABASE "shop copy" FROM "migrator""#
        );
        assert_eq!(
            sql[4],
            r#"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "shop copy" TO "migrator""#
        );
        assert!(sql[sql.len() - 1].contains("would lose CREATE"));
        let none = Apply {
            no_privileges: true,
            ..to
        };
        assert!(sql_of(&p, &none).iter().all(|s| !s.contains("GRANT")));
    }

    #[test]
    fn settings_for_everyone_then_for_roles() {
        let p = Properties {
            comment: None,
            connection_limit: -1,
            ..props(
                None,
                vec![
                    Setting {
                        role: None,
                        entry: "statement_timeout=30s".into(),
                    },
                    Setting {
                        role: Some("Report Writer".into()),
                        entry: "work_mem=64MB".into(),
                    },
                ],
            )
        };
        let to = Apply {
            database: "shop",
            owner: "app",
            set_owner: true,
            no_privileges: false,
        };
        let sql = sql_of(&p, &to);
        assert_eq!(
            sql,
            [
                r#"ALTER DATABASE "shop" SET "statement_timeout" TO '30s'"#,
                r#"ALTER ROLE "Report Writer" IN DATABASE "shop" SET "work_mem" TO '64MB'"#,
            ]
        );
    }
}
