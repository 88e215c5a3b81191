//! Prints the bin directory of a PostgreSQL installation the tests use, fetching and checking
//! its pinned download once per machine, so that scripts (the benchmark) run the same binaries
//! as the tests without a second copy of the pins.
//!
//!   pg-bindir server MAJOR    initdb, pg_ctl and postgres of that major
//!   pg-bindir client          the newest client tools (pg_dump, pg_restore, psql, pgbench)
//!   pg-bindir majors          the majors there are, oldest first

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["server", major] => match major.parse::<u32>() {
            Ok(m) if pg_harness::majors().contains(&m) => pg_harness::server_bindir(m),
            _ => {
                eprintln!(
                    "pg-bindir: no PostgreSQL {major} here; the majors there are {:?}",
                    pg_harness::majors()
                );
                return ExitCode::from(2);
            }
        },
        ["client"] => pg_harness::client_bindir(),
        ["majors"] => {
            let all: Vec<String> = pg_harness::majors().iter().map(u32::to_string).collect();
            println!("{}", all.join(" "));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("usage: pg-bindir server MAJOR | pg-bindir client | pg-bindir majors");
            return ExitCode::from(2);
        }
    };
    println!("{}", dir.display());
    ExitCode::SUCCESS
}
