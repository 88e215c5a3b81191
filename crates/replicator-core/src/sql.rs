//! Quoting for SQL text we must build (COPY statements, DDL on names from the catalog). Values
//! go through bind parameters wherever the protocol allows; names go through [`ident`].

/// A quoted identifier: `"name"` with embedded quotes doubled.
pub fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
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
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b"), r" E'a\\b'");
    }
}
