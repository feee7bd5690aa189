//! Storage: the only module that knows diesel and SQL.
//!
//! One code path serves SQLite (embedded default) and PostgreSQL through a diesel
//! `MultiConnection`; the backend is chosen from the database URL's scheme, never by trying
//! one and falling back to the other. Repository functions take a `&mut DbConn` so that a
//! caller can compose several of them inside one transaction ([`write_txn`]).
//!
//! SQLite runs in WAL mode with `synchronous=FULL`, foreign keys on and a busy timeout, and
//! every write transaction starts with `BEGIN IMMEDIATE` so that concurrent writers queue on
//! the busy timeout instead of failing when a read lock cannot be upgraded.

pub mod alerts;
pub mod changes;
pub mod clients;
pub mod idempotency;
pub mod messages;
pub mod outbox;
pub mod provenance;
pub mod resources;
pub mod routing;
pub mod schema;

use std::path::Path;
use std::time::Duration;

use diesel::Connection;
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
}

/// Run `$body` with `$c` bound to the backend's own connection: for the statements diesel does not
/// offer through `MultiConnection` (multi-row inserts, upserts, row locks).
macro_rules! on_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::DbConn::Sqlite($c) => $body,
            $crate::store::DbConn::Pg($c) => $body,
        }
    };
}
pub(crate) use on_backend;

/// The backend type shared by every query built for [`DbConn`].
pub type Backend = <DbConn as Connection>::Backend;

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write (idempotency key, conditional create, id).
    #[error("unique constraint violated")]
    Unique,
    #[error("database error: {0}")]
    Db(DieselError),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("invalid database URL: {0}")]
    Url(String),
    /// A stored body is not the JSON Signpost wrote: never treated as an empty resource.
    #[error("stored {0} is not valid JSON")]
    Corrupt(String),
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => StoreError::Unique,
            other => StoreError::Db(other),
        }
    }
}

impl From<r2d2::PoolError> for StoreError {
    fn from(e: r2d2::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// A parsed database URL.
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    pub kind: BackendKind,
    /// For SQLite the file path; for PostgreSQL the full URL.
    pub target: String,
}

impl DatabaseUrl {
    /// `postgres://` / `postgresql://` select PostgreSQL; `sqlite://PATH`, `sqlite:PATH` or a
    /// bare path select SQLite.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(StoreError::Url("empty".into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self { kind: BackendKind::Postgres, target: url.to_string() });
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        if path.contains("://") {
            return Err(StoreError::Url("unsupported scheme (use sqlite:// or postgres://)".into()));
        }
        Ok(Self { kind: BackendKind::Sqlite, target: path.to_string() })
    }
}

/// r2d2 manager that connects by scheme and applies the SQLite pragmas on every connection.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConn, r2d2::Error> {
        match self.url.kind {
            BackendKind::Postgres => {
                PgConnection::establish(&self.url.target).map(DbConn::Pg).map_err(r2d2::Error::ConnectionError)
            }
            BackendKind::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.url.target).map_err(r2d2::Error::ConnectionError)?;
                conn.batch_execute(
                    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA cache_size = -16384;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConn::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        conn.is_broken()
    }
}

/// A pool of connections to one database.
pub type Pool = r2d2::Pool<Manager>;

/// A connection borrowed from the [`Pool`].
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// Open a pool for `url`, creating the SQLite file's folder if needed, and run migrations.
pub fn connect(url: &str, max_size: u32) -> Result<Pool, StoreError> {
    let url = DatabaseUrl::parse(url)?;
    if url.kind == BackendKind::Sqlite
        && url.target != ":memory:"
        && let Some(parent) = Path::new(&url.target).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
    }
    let pool = r2d2::Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(10))
        .build(Manager { url })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(pool)
}

/// Run the pending migrations of the pool's backend; returns the versions applied.
pub fn migrate(pool: &Pool) -> Result<Vec<String>, StoreError> {
    let mut conn = pool.get()?;
    let applied = match &mut *conn {
        DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
        DbConn::Pg(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS),
    }
    .map_err(|e| StoreError::Migration(e.to_string()))?;
    Ok(applied.into_iter().map(|v| v.to_string()).collect())
}

/// A cheap round trip, for `/readyz`.
pub fn ping(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get()?;
    conn.ping().map_err(StoreError::from)
}

/// Run `f` in one write transaction: `BEGIN IMMEDIATE` on SQLite, `BEGIN` on PostgreSQL.
/// Commits when `f` returns `Ok`, rolls back otherwise.
pub fn write_txn<T, E>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    // SQLite has one writer at a time: this process's writers queue here, in order, instead of
    // sleeping in SQLite's busy handler (other processes still meet the busy timeout).
    let _writer = match conn {
        DbConn::Sqlite(_) => Some(SQLITE_WRITER.lock().unwrap_or_else(|e| e.into_inner())),
        DbConn::Pg(_) => None,
    };
    let begun = match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"),
        DbConn::Pg(c) => AnsiTransactionManager::begin_transaction(c),
    };
    begun.map_err(|e| E::from(StoreError::from(e)))?;
    let collecting = changes::begin_collecting();
    // A panic inside `f` rolls the transaction back before it unwinds further, so the pooled
    // connection never goes back to the pool mid-transaction.
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            if collecting {
                changes::discard();
            }
            let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(conn);
            std::panic::resume_unwind(panic);
        }
    };
    // The change log is numbered last, just before the commit (see `changes`).
    let outcome = match outcome {
        Ok(value) if collecting => changes::flush(conn).map(|()| value).map_err(E::from),
        Ok(value) => Ok(value),
        Err(e) => {
            if collecting {
                changes::discard();
            }
            Err(e)
        }
    };
    match outcome {
        Ok(value) => match <DbConn as Connection>::TransactionManager::commit_transaction(conn) {
            Ok(()) => Ok(value),
            Err(e) => {
                let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(conn);
                Err(E::from(StoreError::from(e)))
            }
        },
        Err(e) => {
            let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(conn);
            Err(e)
        }
    }
}

/// The SQLite writers of this process, one at a time.
static SQLITE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    #[test]
    fn both_backends_have_the_same_migration_versions() {
        let names = |backend: &str| {
            let dir = format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR"));
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("sqlite"), names("postgres"));
        assert!(names("sqlite").len() >= 2);
    }

    #[test]
    fn a_panic_inside_a_write_transaction_rolls_it_back_and_frees_the_connection() {
        use diesel::connection::SimpleConnection;
        let dir = tempfile::tempdir().unwrap();
        let pool = super::connect(&format!("sqlite://{}", dir.path().join("t.db").display()), 1).unwrap();
        let mut conn = pool.get().unwrap();
        conn.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = super::write_txn::<(), super::StoreError>(&mut conn, |c| {
                c.batch_execute("INSERT INTO t VALUES (1)").unwrap();
                panic!("inside the transaction");
            });
        }));
        assert!(panicked.is_err());
        // The same connection starts a new transaction (it would fail if one were still open),
        // and the panicking one's row is gone.
        super::write_txn::<(), super::StoreError>(&mut conn, |c| Ok(c.batch_execute("INSERT INTO t VALUES (2)")?))
            .unwrap();
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        use diesel::RunQueryDsl;
        let n: N = diesel::sql_query("SELECT COUNT(*) AS n FROM t").get_result(&mut *conn).unwrap();
        assert_eq!(n.n, 1);
    }
}
