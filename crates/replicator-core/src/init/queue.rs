//! The pool's queue of work, without I/O: which task runs next, and what a finished unit makes
//! ready. A table's post-data statements (its indexes and constraints) wait until the last unit
//! of its rows is in, then go to the front, so its indexes build while other tables still load.

use std::collections::{HashMap, VecDeque};

use super::post_data::Statement;
use crate::filter::QualName;

/// One piece of work for a connection pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Task {
    /// A unit of rows, by its index in the plan.
    Unit(usize),
    /// A statement on the target.
    Statement(Statement),
}

/// The tasks of one pass of the pool.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    ready: VecDeque<Task>,
    /// Statements of a table whose rows are still being copied.
    waiting: HashMap<QualName, Vec<Statement>>,
    /// Units still to finish, per table.
    remaining: HashMap<QualName, usize>,
    /// Rows and bytes copied so far, per table.
    copied: HashMap<QualName, (u64, u64)>,
}

impl Queue {
    /// Statements to run in this order.
    pub fn of_statements(statements: impl IntoIterator<Item = Statement>) -> Self {
        Self {
            ready: statements.into_iter().map(Task::Statement).collect(),
            ..Self::default()
        }
    }

    /// The data phase: the units to copy (each with its table), in plan order, and each
    /// table's statements, which wait for the table's last unit. A table with no unit left to
    /// copy (a resumed run) has its statements ready at once, after the units.
    pub fn for_data(
        units: impl IntoIterator<Item = (usize, QualName)>,
        by_table: impl IntoIterator<Item = (QualName, Vec<Statement>)>,
    ) -> Self {
        let mut q = Self::default();
        for (i, table) in units {
            q.ready.push_back(Task::Unit(i));
            *q.remaining.entry(table).or_default() += 1;
        }
        for (table, statements) in by_table {
            if q.remaining.contains_key(&table) {
                q.waiting.entry(table).or_default().extend(statements);
            } else {
                q.ready.extend(statements.into_iter().map(Task::Statement));
            }
        }
        q
    }

    /// The next task, if one is ready.
    pub fn next(&mut self) -> Option<Task> {
        self.ready.pop_front()
    }

    /// A unit of `table` finished with these counts. When it was the table's last, its
    /// statements move to the front of the queue (in their order) and the table's totals are
    /// returned.
    pub fn unit_done(&mut self, table: &QualName, rows: u64, bytes: u64) -> Option<(u64, u64)> {
        let left = self.remaining.get_mut(table)?;
        *left -= 1;
        let total = self.copied.entry(table.clone()).or_default();
        total.0 += rows;
        total.1 += bytes;
        if *left > 0 {
            return None;
        }
        self.remaining.remove(table);
        for s in self
            .waiting
            .remove(table)
            .unwrap_or_default()
            .into_iter()
            .rev()
        {
            self.ready.push_front(Task::Statement(s));
        }
        self.copied.remove(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(label: &str) -> Statement {
        Statement {
            key: Some(label.into()),
            label: label.into(),
            sql: format!("SELECT '{label}'"),
            cost: 0,
            is_index: true,
        }
    }

    fn t(name: &str) -> QualName {
        QualName::new("public", name)
    }

    fn label(task: &Task) -> String {
        match task {
            Task::Unit(i) => format!("unit {i}"),
            Task::Statement(s) => s.label.clone(),
        }
    }

    #[test]
    fn a_tables_statements_run_first_once_its_last_unit_is_in() {
        let mut q = Queue::for_data(
            [(0, t("big")), (1, t("big")), (2, t("small"))],
            [
                (t("big"), vec![st("big_pkey"), st("big_idx")]),
                (t("small"), vec![st("small_pkey")]),
            ],
        );
        assert_eq!(q.next(), Some(Task::Unit(0)));
        assert_eq!(q.next(), Some(Task::Unit(1)));
        // One of big's two ranges is in: nothing is released yet.
        assert_eq!(q.unit_done(&t("big"), 10, 100), None);
        assert_eq!(q.unit_done(&t("big"), 5, 50), Some((15, 150)));
        // big's statements, in their order, ahead of the unit still queued.
        let order: Vec<String> = std::iter::from_fn(|| q.next()).map(|t| label(&t)).collect();
        assert_eq!(order, ["big_pkey", "big_idx", "unit 2"]);
        assert_eq!(q.unit_done(&t("small"), 1, 1), Some((1, 1)));
        assert_eq!(q.next().map(|t| label(&t)).as_deref(), Some("small_pkey"));
        assert_eq!(q.next(), None);
    }

    #[test]
    fn statements_of_a_table_with_nothing_left_to_copy_are_ready_after_the_units() {
        // A resumed run: "done" has no unit left; "rest" still has one.
        let mut q = Queue::for_data(
            [(3, t("rest"))],
            [
                (t("done"), vec![st("done_pkey")]),
                (t("rest"), vec![st("rest_pkey")]),
            ],
        );
        let order: Vec<String> = std::iter::from_fn(|| q.next()).map(|t| label(&t)).collect();
        assert_eq!(order, ["unit 3", "done_pkey"]);
        assert_eq!(q.unit_done(&t("rest"), 0, 0), Some((0, 0)));
        assert_eq!(q.next().map(|t| label(&t)).as_deref(), Some("rest_pkey"));
    }

    #[test]
    fn statements_alone_keep_their_order() {
        let mut q = Queue::of_statements([st("a"), st("b"), st("c")]);
        let order: Vec<String> = std::iter::from_fn(|| q.next()).map(|t| label(&t)).collect();
        assert_eq!(order, ["a", "b", "c"]);
        // A unit the queue does not know (never happens) releases nothing.
        assert_eq!(q.unit_done(&t("x"), 1, 1), None);
    }
}
