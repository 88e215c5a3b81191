//! Which relations a run copies: `--include-tables`/`--exclude-tables` patterns (`schema.table`
//! with `*` and `?` globs), `--schema-only-tables`, and `--table-filter 'schema.table:predicate'`.

use std::collections::BTreeMap;

/// A table pattern or `--table-filter` entry that does not parse; the text names it and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

type Result<T, E = FilterError> = std::result::Result<T, E>;

/// A quoted SQL identifier: `"name"` with embedded double quotes doubled (as libpq's
/// `PQescapeIdentifier`; nothing else is special inside a quoted identifier).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A qualified relation name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualName {
    /// Schema.
    pub schema: String,
    /// Relation.
    pub name: String,
}

impl QualName {
    /// Build one.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for QualName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A `schema.table` pattern. Without a schema part it matches the name in any schema. `*` and
/// `?` are wildcards; double quotes make a part literal (`"my.schema"."T*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    schema: Option<Glob>,
    name: Glob,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(Vec<GlobItem>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobItem {
    Char(char),
    Any,
    One,
}

impl Glob {
    fn matches(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        // Iterative wildcard match with backtracking on the last `*`.
        let (mut p, mut i) = (0usize, 0usize);
        let (mut star, mut mark) = (None::<usize>, 0usize);
        while i < s.len() {
            match self.0.get(p) {
                Some(GlobItem::Char(c)) if *c == s[i] => {
                    p += 1;
                    i += 1;
                }
                Some(GlobItem::One) => {
                    p += 1;
                    i += 1;
                }
                Some(GlobItem::Any) => {
                    star = Some(p);
                    mark = i;
                    p += 1;
                }
                _ => match star {
                    Some(sp) => {
                        p = sp + 1;
                        mark += 1;
                        i = mark;
                    }
                    None => return false,
                },
            }
        }
        self.0[p..].iter().all(|g| *g == GlobItem::Any)
    }
}

impl Pattern {
    /// Parse a pattern.
    ///
    /// # Errors
    /// A message naming the pattern when it is empty, has an unclosed quote or too many dots.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| FilterError(format!("table pattern '{text}': {why}"));
        let mut parts: Vec<Vec<GlobItem>> = vec![Vec::new()];
        let mut chars = text.trim().chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            let part = parts.last_mut().ok_or_else(|| bad("empty"))?;
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    part.push(GlobItem::Char('"'));
                }
                '"' => quoted = !quoted,
                '.' if !quoted => parts.push(Vec::new()),
                '*' if !quoted => part.push(GlobItem::Any),
                '?' if !quoted => part.push(GlobItem::One),
                c => part.push(GlobItem::Char(c)),
            }
        }
        if quoted {
            return Err(bad("unclosed double quote"));
        }
        if parts.iter().any(Vec::is_empty) {
            return Err(bad("empty schema or table name; write schema.table"));
        }
        let mut parts = parts.into_iter().map(Glob);
        let (schema, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => (None, name),
            (Some(schema), Some(name), None) => (Some(schema), name),
            _ => {
                return Err(bad(
                    "too many dots; write schema.table (quote names with dots)",
                ))
            }
        };
        Ok(Self {
            schema,
            name,
            text: text.trim().to_owned(),
        })
    }

    /// Whether the pattern matches a relation.
    pub fn matches(&self, q: &QualName) -> bool {
        self.schema.as_ref().is_none_or(|s| s.matches(&q.schema)) && self.name.matches(&q.name)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The filters of a run.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Copy only relations matching one of these (all when empty).
    pub include: Vec<Pattern>,
    /// Never copy relations matching one of these.
    pub exclude: Vec<Pattern>,
    /// Create these tables but copy no rows.
    pub schema_only: Vec<Pattern>,
    /// Copy only the rows of a table for which the predicate holds.
    pub row_filters: BTreeMap<QualName, String>,
}

impl Filter {
    /// Build from the CLI's strings.
    ///
    /// # Errors
    /// [`FilterError`] naming the bad pattern or `--table-filter` entry.
    pub fn from_args(
        include: &[String],
        exclude: &[String],
        schema_only: &[String],
        table_filters: &[String],
    ) -> Result<Self> {
        let patterns = |v: &[String]| {
            v.iter()
                .map(|s| Pattern::parse(s))
                .collect::<Result<Vec<_>>>()
        };
        let mut row_filters = BTreeMap::new();
        for entry in table_filters {
            let (table, predicate) = split_table_filter(entry)?;
            if row_filters.insert(table.clone(), predicate).is_some() {
                return Err(FilterError(format!("--table-filter names {table} twice")));
            }
        }
        Ok(Self {
            include: patterns(include)?,
            exclude: patterns(exclude)?,
            schema_only: patterns(schema_only)?,
            row_filters,
        })
    }

    /// The filters in words, as a run records them (a `--resume` must use the same ones);
    /// `all tables` when there are none.
    pub fn describe(&self) -> String {
        let list = |flag: &str, v: &[Pattern]| {
            (!v.is_empty()).then(|| {
                let texts: Vec<&str> = v.iter().map(Pattern::as_str).collect();
                format!("{flag} {}", texts.join(","))
            })
        };
        let parts: Vec<String> = [
            list("--include-tables", &self.include),
            list("--exclude-tables", &self.exclude),
            list("--schema-only-tables", &self.schema_only),
        ]
        .into_iter()
        .flatten()
        .chain(
            self.row_filters
                .iter()
                .map(|(t, p)| format!("--table-filter '{t}:{p}'")),
        )
        .collect();
        if parts.is_empty() {
            "all tables".into()
        } else {
            parts.join(" ")
        }
    }

    /// Whether a relation (table, view, sequence …) is part of the run.
    pub fn selects(&self, q: &QualName) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(q)))
            && !self.exclude.iter().any(|p| p.matches(q))
    }

    /// Whether a selected table is copied without rows.
    pub fn is_schema_only(&self, q: &QualName) -> bool {
        self.schema_only.iter().any(|p| p.matches(q))
    }

    /// Whether any filter is set (the target then holds a subset of the source).
    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
            && self.exclude.is_empty()
            && self.schema_only.is_empty()
            && self.row_filters.is_empty()
    }
}

/// `schema.table:predicate` → the table and the predicate. The table part is literal (quotes
/// allowed) and must name a schema.
fn split_table_filter(entry: &str) -> Result<(QualName, String)> {
    let bad = |why: &str| FilterError(format!("--table-filter '{entry}': {why}"));
    let mut quoted = false;
    let mut split = None;
    for (i, c) in entry.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let i = split.ok_or_else(|| bad("write schema.table:SQL predicate"))?;
    let (table, predicate) = (entry[..i].trim(), entry[i + 1..].trim());
    if predicate.is_empty() {
        return Err(bad("the predicate after ':' is empty"));
    }
    let names = split_literal_name(table).ok_or_else(|| bad("write schema.table before ':'"))?;
    Ok((names, predicate.to_owned()))
}

fn split_literal_name(s: &str) -> Option<QualName> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                parts.last_mut()?.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut()?.push(c),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, name]) if !schema.is_empty() && !name.is_empty() && !quoted => {
            Some(QualName::new(schema, name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str, n: &str) -> QualName {
        QualName::new(s, n)
    }

    #[test]
    fn globs_match_schema_and_name() {
        let p = Pattern::parse("public.film*").expect("parses");
        assert!(p.matches(&q("public", "film")));
        assert!(p.matches(&q("public", "film_actor")));
        assert!(!p.matches(&q("other", "film")));
        let any_schema = Pattern::parse("pay?ent").expect("parses");
        assert!(any_schema.matches(&q("s1", "payment")));
        assert!(!any_schema.matches(&q("s1", "payments")));
        let star = Pattern::parse("*.*_p2022*").expect("parses");
        assert!(star.matches(&q("x", "payment_p2022_01")));
        assert!(!star.matches(&q("x", "payment")));
    }

    #[test]
    fn quotes_make_names_literal() {
        let p = Pattern::parse(r#""My.Schema"."T*""#).expect("parses");
        assert!(p.matches(&q("My.Schema", "T*")));
        assert!(!p.matches(&q("My.Schema", "Tx")));
        assert!(Pattern::parse(r#""open"#).is_err());
        assert!(Pattern::parse("a.b.c").is_err());
        assert!(Pattern::parse("a.").is_err());
    }

    #[test]
    fn include_then_exclude() {
        let f = Filter::from_args(&["public.*".into()], &["public.secret*".into()], &[], &[])
            .expect("valid");
        assert!(f.selects(&q("public", "users")));
        assert!(!f.selects(&q("public", "secrets")));
        assert!(!f.selects(&q("audit", "log")));
        assert!(Filter::default().selects(&q("audit", "log")));
    }

    #[test]
    fn table_filter_splits_at_the_first_unquoted_colon() {
        let f = Filter::from_args(
            &[],
            &[],
            &[],
            &[r#"public."odd:name":created_at > '2024-01-01 00:00'"#.into()],
        )
        .expect("valid");
        let pred = f
            .row_filters
            .get(&q("public", "odd:name"))
            .expect("present");
        assert_eq!(pred, "created_at > '2024-01-01 00:00'");
        for bad in ["public.t", "t:x > 1", "public.t:  ", ".t:x"] {
            let err = Filter::from_args(&[], &[], &[], &[bad.into()])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--table-filter"), "{bad}: {err}");
        }
    }
}
