//! Quoting for SQL text we must build (COPY statements, DDL on names from the catalog). Values
//! go through bind parameters wherever the protocol allows; names go through [`ident`].

/// A quoted identifier: `"name"` with embedded quotes doubled (the one definition lives with
/// the table names, in [`job_model::filter::quote_ident`]).
pub fn ident(name: &str) -> String {
    job_model::filter::quote_ident(name)
}

/// A quoted literal, safe whatever `standard_conforming_strings` is.
pub fn literal(value: &str) -> String {
    postgres_protocol::escape::escape_literal(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident(r#"Mixed "Case""#), r#""Mixed ""Case""""#);
        // As PQescapeIdentifier: a backslash is an ordinary character in a quoted identifier.
        for name in [r"a\b", r#"x"\y"#, "", r#"""""#, "ünï.cödé"] {
            assert_eq!(
                ident(name),
                postgres_protocol::escape::escape_identifier(name),
                "{name}"
            );
        }
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b"), r" E'a\\b'");
    }
}
