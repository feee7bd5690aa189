//! Storage: the only module that knows diesel and SQL.
//!
//! One code path serves SQLite (embedded default) and PostgreSQL through a diesel
//! `MultiConnection`; the backend is chosen from the database URL's scheme, never by trying
//! one and falling back to the other. Repository functions take a `&mut DbConn` so that a
//! caller can compose several of them inside one transaction ([`write_txn`]).
//!
//! SQLite runs in WAL mode with `synchronous=FULL`, foreign keys on and a busy timeout. Reads use
//! the pool; every write of the process goes through one writer connection with group commit
//! ([`write_txn`]): the writes waiting at the moment share one transaction and one fsync (the
//! writer's own, see [`GroupWriter`]), a failed one takes back only its own rows, and none is
//! answered before that transaction is on disk. The writer's page cache and prepared statements
//! stay warm, because no other connection of the process writes. PostgreSQL writers each use
//! their own pooled connection and transaction.

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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Insert `$rows` (a slice of one table's rows) into `$table`: on PostgreSQL one multi-row
/// statement (one round trip); on SQLite one single-row statement per row, which diesel
/// prepares once and caches (a multi-row statement is compiled again for every call, and
/// SQLite has no round trips to save).
///
/// `insert_rows!(keep_existing: ...)` leaves a row whose key is already there as it is instead
/// of failing.
macro_rules! insert_rows {
    ($conn:expr, $table:expr, $rows:expr) => {
        $crate::store::insert_rows!(@insert_into [] $conn, $table, $rows)
    };
    (keep_existing: $conn:expr, $table:expr, $rows:expr) => {
        $crate::store::insert_rows!(@insert_or_ignore_into [.on_conflict_do_nothing()] $conn, $table, $rows)
    };
    (@$sqlite:ident [$($pg:tt)*] $conn:expr, $table:expr, $rows:expr) => {{
        let rows = $rows;
        match $conn {
            $crate::store::DbConn::Sqlite(c) => {
                for row in rows {
                    diesel::$sqlite($table).values(row).execute(c)?;
                }
            }
            $crate::store::DbConn::Pg(c) => {
                if !rows.is_empty() {
                    diesel::insert_into($table).values(rows)$($pg)*.execute(c)?;
                }
            }
        }
    }};
}
pub(crate) use insert_rows;

/// Run `$body` with `$c` bound to the backend's own connection. A query run there has a type
/// diesel recognises: its prepared statement is found by that type, where a query run through
/// [`DbConn`] has its SQL written out again on every call to find it. For the queries every
/// referral makes.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::DbConn::Sqlite($c) => $body,
            $crate::store::DbConn::Pg($c) => $body,
        }
    };
}
pub(crate) use on_backend;

/// `UPDATE {table} SET {column} = {column} + ? WHERE {key} = ?` for one table, as a statement
/// of its own type, which diesel keeps prepared: it prepares its own UPDATE statements again on
/// every call. For the counters every write moves, on the SQLite writer.
macro_rules! increment {
    ($name:ident: $table:literal, $column:literal, $key:literal: $key_ty:ty as $key_sql:ty) => {
        struct $name<'a> {
            key: &'a $key_ty,
            delta: i64,
        }

        impl diesel::query_builder::QueryId for $name<'_> {
            type QueryId = $name<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl<DB: diesel::backend::Backend> diesel::query_builder::QueryFragment<DB> for $name<'_>
        where
            i64: diesel::serialize::ToSql<diesel::sql_types::BigInt, DB>,
            $key_ty: diesel::serialize::ToSql<$key_sql, DB>,
        {
            fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, DB>) -> diesel::QueryResult<()> {
                out.push_sql(concat!("UPDATE ", $table, " SET ", $column, " = ", $column, " + "));
                out.push_bind_param::<diesel::sql_types::BigInt, _>(&self.delta)?;
                out.push_sql(concat!(" WHERE ", $key, " = "));
                out.push_bind_param::<$key_sql, _>(self.key)?;
                Ok(())
            }
        }

        impl<Conn> diesel::RunQueryDsl<Conn> for $name<'_> {}
    };
}
pub(crate) use increment;

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

/// A new id for a stored resource or row: a UUID whose leading bits are the time (RFC 9562
/// version 7, 74 random bits), so that the rows written together sit together in the id-keyed
/// indexes and a group commit writes fewer pages.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
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
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY;",
                ))
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

/// A pool of connections to one database, and on SQLite the process's one writer.
#[derive(Clone)]
pub struct Pool {
    inner: r2d2::Pool<Manager>,
    writer: Option<Arc<GroupWriter>>,
}

impl Pool {
    /// Borrow a connection (waits up to the pool's timeout).
    pub fn get(&self) -> Result<PooledConn, r2d2::PoolError> {
        Ok(PooledConn { conn: self.inner.get()?, writer: self.writer.clone() })
    }

    /// [`write_txn`] on a connection of this pool: on SQLite straight to the writer, without
    /// borrowing a connection it would not use.
    pub fn write_txn<T, E>(&self, f: impl FnMut(&mut DbConn) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        match &self.writer {
            Some(writer) => writer.run(f),
            None => single_txn(&mut *self.inner.get().map_err(|e| E::from(StoreError::from(e)))?, f),
        }
    }

    /// Whether writes go through one writer (SQLite), so that reads worth making before a write
    /// transaction are better made there ([`read_snapshot`]) than while holding the writer.
    pub fn has_one_writer(&self) -> bool {
        self.writer.is_some()
    }
}

/// A connection borrowed from the [`Pool`]; [`write_txn`] on it goes to the pool's writer.
pub struct PooledConn {
    conn: r2d2::PooledConnection<Manager>,
    writer: Option<Arc<GroupWriter>>,
}

impl std::ops::Deref for PooledConn {
    type Target = DbConn;
    fn deref(&self) -> &DbConn {
        &self.conn
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut DbConn {
        &mut self.conn
    }
}

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
    let writer = match url.kind {
        BackendKind::Sqlite => {
            let manager = Manager { url: url.clone() };
            let conn = manager.connect().map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let writer = if url.target == ":memory:" {
                GroupWriter::new(conn, None)
            } else {
                // The writer's commits write the WAL without waiting for the disk: it syncs the
                // WAL itself after each group, outside its lock (see `GroupWriter`).
                let mut conn = conn;
                let wal = database_file(&mut conn)?.map(|f| std::path::PathBuf::from(format!("{f}-wal")));
                if wal.is_some() {
                    conn.batch_execute("PRAGMA synchronous = NORMAL;")?;
                }
                let writer = GroupWriter::new(conn, wal);
                // The writer never copies the WAL back into the database itself (its commits
                // would wait for it): a checkpointer of its own does, beside it.
                let checkpointer = manager.connect().map_err(|e| StoreError::Unavailable(e.to_string()))?;
                if spawn_checkpointer(checkpointer, Arc::downgrade(&writer.restart)) {
                    writer.lock().conn.batch_execute("PRAGMA wal_autocheckpoint = 0;")?;
                }
                writer
            };
            Some(Arc::new(writer))
        }
        BackendKind::Postgres => None,
    };
    let inner = r2d2::Pool::builder()
        .max_size(max_size)
        // A borrowed PostgreSQL connection is pinged first (the server may have closed it); a
        // SQLite connection is a file opened in this process, with nothing between to break.
        .test_on_check_out(url.kind == BackendKind::Postgres)
        .connection_timeout(Duration::from_secs(10))
        .build(Manager { url })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(Pool { inner, writer })
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

/// A cheap round trip, for `/readyz`; fails too once the SQLite writer takes no more writes.
pub fn ping(pool: &Pool) -> Result<(), StoreError> {
    if let Some(writer) = &pool.writer
        && writer.unsynced.load(Ordering::Acquire)
    {
        return Err(StoreError::Unavailable("the database's WAL could not be synced".into()));
    }
    let mut conn = pool.get()?;
    conn.ping().map_err(StoreError::from)
}

/// Run `f` in one write transaction and return its value once that transaction has committed;
/// roll back what `f` wrote when it returns `Err` or panics.
///
/// On PostgreSQL: `BEGIN` … `COMMIT` on `conn`. On SQLite: on the pool's writer connection, with
/// group commit (see [`GroupWriter`]); `conn` itself is not used. `f` may run more than once
/// there (when another write of its group fails after writing), each time in a new transaction:
/// only its last run is committed.
pub fn write_txn<T, E>(conn: &mut PooledConn, f: impl FnMut(&mut DbConn) -> Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    match conn.writer.clone() {
        Some(writer) => writer.run(f),
        None => single_txn(&mut conn.conn, f),
    }
}

/// `f` in one read-only transaction on `conn` (a pooled connection, never the SQLite writer),
/// so that its reads see one committed state of the database; ended with a rollback. The reads
/// a write needs are made this way before its write transaction, which then holds the SQLite
/// writer only for its inserts: they see what was committed when they ran, as a PostgreSQL
/// write transaction's reads (read committed) always do.
pub fn read_snapshot<T, E>(conn: &mut PooledConn, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    let conn = &mut *conn.conn;
    let begun = match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN DEFERRED"),
        DbConn::Pg(c) => {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        }
    };
    begun.map_err(|e| E::from(StoreError::from(e)))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
    let ended = <DbConn as Connection>::TransactionManager::rollback_transaction(conn);
    match outcome {
        // A failed read's own error says what went wrong (a lost connection is a 503); the
        // rollback's, after it, would not.
        Ok(Err(e)) => Err(e),
        Ok(Ok(value)) => ended.map(|()| value).map_err(|e| E::from(StoreError::from(e))),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `f` in a savepoint of the write transaction running on `conn`: when `f` fails, only what it
/// wrote is rolled back (its change-log entries too) and the transaction goes on.
pub fn savepoint<T, E>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    let mark = changes::mark();
    let mut failed = None;
    let ran = conn.transaction::<T, DieselError, _>(|c| {
        f(c).map_err(|e| {
            failed = Some(e);
            DieselError::RollbackTransaction
        })
    });
    ran.map_err(|e| {
        changes::rewind(mark);
        failed.unwrap_or_else(|| StoreError::from(e).into())
    })
}

/// `f` inside the transaction (or savepoint) just begun on `conn`, with its change log numbered
/// last; a panic rolls back and unwinds further. Leaves committing or rolling back to the caller.
fn run_collecting<T, E>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    let collecting = changes::begin_collecting();
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
    match outcome {
        Ok(value) if collecting => changes::flush(conn).map(|()| value).map_err(E::from),
        Ok(value) => Ok(value),
        Err(e) => {
            if collecting {
                changes::discard();
            }
            Err(e)
        }
    }
}

/// One transaction of its own on `conn` (PostgreSQL, and any connection without a writer).
fn single_txn<T, E>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    let begun = match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"),
        DbConn::Pg(c) => AnsiTransactionManager::begin_transaction(c),
    };
    begun.map_err(|e| E::from(StoreError::from(e)))?;
    match run_collecting(conn, f) {
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

/// How long a SQLite connection waits for a lock another holds.
const BUSY_TIMEOUT_MS: u32 = 5000;

/// How often the checkpointer copies the WAL's committed pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// A WAL this many frames long (4 KiB pages: 16 MiB) is started afresh by the writer.
const RESTART_WAL_AT: i32 = 4096;

/// How long the writer waits for readers still reading an old WAL before starting it afresh;
/// if they take longer, it tries again later.
const RESTART_WAIT_MS: u32 = 20;

/// What `PRAGMA wal_checkpoint` answers: frames in the WAL.
#[derive(diesel::QueryableByName)]
struct Checkpointed {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
}

/// A statement that always fails (there is no such savepoint). Diesel, seeing a failed
/// statement on a SQLite connection that is no longer in a transaction, forgets the transaction
/// it thought open: how the writer learns that SQLite ended its transaction itself.
const NO_SUCH_SAVEPOINT: &str = "ROLLBACK TO signpost_no_such_savepoint";

/// The file of a SQLite connection's main database, as SQLite names it (none in memory).
fn database_file(conn: &mut DbConn) -> Result<Option<String>, StoreError> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Database {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        file: String,
    }
    let DbConn::Sqlite(c) = conn else { return Ok(None) };
    let found: Vec<Database> = diesel::sql_query("PRAGMA database_list").load(c)?;
    Ok(found.into_iter().find(|d| d.name == "main").map(|d| d.file).filter(|f| !f.is_empty()))
}

/// The rows the connection's statements have inserted, updated or deleted since it opened
/// (SQLite).
fn total_changes(conn: &mut DbConn) -> Result<i64, StoreError> {
    use diesel::RunQueryDsl;
    diesel::define_sql_function! {
        /// SQLite's `total_changes()`.
        fn total_changes() -> diesel::sql_types::BigInt;
    }
    // A select diesel keeps prepared (it prepares `sql_query` text again for every call).
    match conn {
        DbConn::Sqlite(c) => Ok(diesel::select(total_changes()).get_result(c)?),
        DbConn::Pg(_) => Err(StoreError::Unavailable("total_changes is SQLite's".into())),
    }
}

/// Copy the WAL into the database file every [`CHECKPOINT_EVERY`], until the writer whose
/// `restart` flag this is has gone. `false` if it could not start (the writer then checkpoints
/// as SQLite does by default).
///
/// A `PASSIVE` checkpoint never waits for the writer or readers. SQLite starts the WAL afresh at
/// a write only when all of it has been copied and no reader still reads from it, which a
/// steady stream of writes and reads never allows: the WAL would grow without end (past a GiB
/// in a minute of ingest), each write extending the file and each read searching a longer WAL
/// index. So once the WAL is [`RESTART_WAL_AT`] frames long, the checkpointer raises the
/// writer's `restart` flag, and the writer, between two groups, starts it afresh
/// ([`GroupWriter::restart_wal`]).
fn spawn_checkpointer(mut conn: DbConn, restart: std::sync::Weak<AtomicBool>) -> bool {
    let spawned = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
        use diesel::RunQueryDsl;
        loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            let Some(flag) = restart.upgrade() else { break };
            match diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result::<Checkpointed>(&mut conn) {
                Ok(c) if c.log >= RESTART_WAL_AT => flag.store(true, Ordering::Release),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed; retrying"),
            }
        }
    });
    if let Err(e) = &spawned {
        tracing::error!(error = %e, "cannot start the SQLite checkpointer");
    }
    spawned.is_ok()
}

/// The most writes one SQLite transaction carries, so that the first of them waits for a
/// bounded number of others.
const MAX_GROUP: usize = 64;

/// After a group was rolled back because one of its writes failed after writing, this many
/// groups put each write in a savepoint of its own (a client whose writes keep failing that way
/// costs the others one rolled-back group in this many, not every group).
const CAREFUL_GROUPS: u64 = 32;

/// The SQLite writer of one database: one connection, one write at a time, group commit.
///
/// A write takes the lock, opens the group's transaction if none is open (`BEGIN IMMEDIATE`),
/// runs, and then commits the group unless more writes are queued for the lock and the group is
/// not full: the last of them commits. A write is answered only once its group has committed
/// and the WAL is on disk (or with an error if that commit failed), so "201 means durably
/// stored" holds, with one fsync per group.
///
/// The fsync is the writer's own, not SQLite's (its connection commits with `synchronous =
/// NORMAL`): the write that committed a group releases the lock, syncs the WAL file, and then
/// answers the group, while the next group already runs. A later group's sync covers every
/// group committed before it. Readers may see a group a moment before it is on disk; only a
/// power cut in that moment would take it back, and no write of it has been answered then. If
/// a sync fails, what is on disk is unknown from the first group not yet known to be there (a
/// WAL is read back only up to its first missing frame): that group and every later one fail
/// (503), and the writer takes no more writes; at the next start SQLite's recovery keeps
/// exactly what reached the disk.
///
/// A write that fails must leave nothing behind and not disturb the others. Writes run without
/// a savepoint of their own, because a savepoint makes SQLite copy every page the write touches
/// first (an eighth of the CPU of a referral). A write that fails without having changed a row
/// (most refusals are decided before writing) leaves nothing to take back. One that fails after
/// writing rolls the whole group back, and every write of the group runs again, each in a
/// savepoint of its own, in a new group ([`CAREFUL_GROUPS`]); its own error is then the one it
/// fails with again. So writes must be safe to run again: they are `FnMut`, and what they do
/// outside the transaction (logging aside) they do after it.
pub struct GroupWriter {
    state: std::sync::Mutex<WriterState>,
    /// How the groups ended, and when they are on disk.
    ended: std::sync::Mutex<Ended>,
    committed: std::sync::Condvar,
    /// The WAL file the writer syncs (none for an in-memory database).
    wal: Option<std::path::PathBuf>,
    /// Set once a sync of the WAL has failed: no more writes.
    unsynced: AtomicBool,
    /// Writes waiting for the lock.
    queued: std::sync::atomic::AtomicUsize,
    /// Raised by the checkpointer when the WAL should start afresh; held while the writer
    /// exists (its checkpointer stops when it is gone).
    restart: Arc<AtomicBool>,
}

struct WriterState {
    conn: DbConn,
    /// The group whose transaction is open (`open`) or was last committed.
    group: u64,
    open: bool,
    size: usize,
    /// Whether the open group's writes each run in a savepoint.
    careful: bool,
    /// The last group that is careful after a rolled-back one.
    careful_until: u64,
}

/// How the writer's groups ended.
#[derive(Default)]
struct Ended {
    /// Every group up to this one that committed is on disk.
    durable: u64,
    /// Groups whose commit failed, with the reason (the last few).
    failed: std::collections::VecDeque<(u64, String)>,
    /// Groups rolled back for their writes to run again (the last few).
    rolled_back: std::collections::VecDeque<u64>,
    /// Groups rolled back that stored nothing: their writes were all refused (the last few).
    empty: std::collections::VecDeque<u64>,
    /// The first group whose WAL could not be synced, and why: it and every later one failed.
    unsynced_from: Option<(u64, String)>,
}

/// How one run of a write in a group went.
enum Ran<T, E> {
    /// Its outcome, final once its group has committed; and the group, if this write committed
    /// it (its WAL is then this write's to sync).
    Done(Result<T, E>, Option<u64>),
    /// Its group was rolled back: run it again.
    Again,
}

/// Keep the last 64 entries of a list of groups.
fn remember<X>(list: &mut std::collections::VecDeque<X>, x: X) {
    list.push_back(x);
    if list.len() > 64 {
        list.pop_front();
    }
}

impl GroupWriter {
    fn new(conn: DbConn, wal: Option<std::path::PathBuf>) -> Self {
        Self {
            state: std::sync::Mutex::new(WriterState {
                conn,
                group: 0,
                open: false,
                size: 0,
                careful: false,
                careful_until: 0,
            }),
            ended: Default::default(),
            committed: std::sync::Condvar::new(),
            wal,
            unsynced: AtomicBool::new(false),
            queued: Default::default(),
            restart: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ended(&self) -> std::sync::MutexGuard<'_, Ended> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run<T, E>(&self, mut f: impl FnMut(&mut DbConn) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut careful = false;
        loop {
            if self.unsynced.load(Ordering::Acquire) {
                return Err(E::from(StoreError::Unavailable("the database's WAL could not be synced".into())));
            }
            self.queued.fetch_add(1, Ordering::SeqCst);
            let mut st = self.lock();
            self.queued.fetch_sub(1, Ordering::SeqCst);
            if !st.open {
                if let DbConn::Sqlite(c) = &mut st.conn
                    && let Err(e) = AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
                {
                    return Err(E::from(StoreError::from(e)));
                }
                st.open = true;
                st.group += 1;
                st.size = 0;
                st.careful = st.group <= st.careful_until;
            }
            // Once a write that runs again has joined, the group's later writes cannot roll it
            // back: they are careful too.
            st.careful |= careful;
            careful = st.careful;
            let group = st.group;
            let ran = if careful { self.run_careful(&mut st, &mut f) } else { self.run_plain(&mut st, &mut f) };
            drop(st);
            let outcome = match ran {
                Ran::Done(outcome, committed) => {
                    if let Some(committed) = committed {
                        self.sync(committed);
                    }
                    outcome
                }
                Ran::Again => {
                    careful = true;
                    continue;
                }
            };
            // A refused write waits too: what refused it (a key or id another write of the group
            // took) is then committed, and readers see it.
            let mut ended = self.lock_ended();
            loop {
                if ended.rolled_back.contains(&group) {
                    break;
                }
                if let Some((_, why)) = ended.failed.iter().find(|(g, _)| *g == group) {
                    return Err(E::from(StoreError::Unavailable(format!("commit failed: {why}"))));
                }
                if let Some((from, why)) = &ended.unsynced_from
                    && group >= *from
                {
                    return Err(E::from(StoreError::Unavailable(format!("the WAL could not be synced: {why}"))));
                }
                if ended.durable >= group || ended.empty.contains(&group) {
                    return outcome;
                }
                ended = self.committed.wait(ended).unwrap_or_else(|e| e.into_inner());
            }
            careful = true;
        }
    }

    /// The WAL on disk, up to the end of `group` at least: answer the writes of every group
    /// committed so far.
    fn sync(&self, group: u64) {
        let synced = match &self.wal {
            Some(wal) => std::fs::File::open(wal).and_then(|f| f.sync_data()),
            None => Ok(()),
        };
        let mut ended = self.lock_ended();
        match synced {
            Ok(()) => ended.durable = ended.durable.max(group),
            Err(e) => {
                if !self.unsynced.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, group, "the SQLite WAL could not be synced: no more writes until a restart, whose recovery keeps what reached the disk");
                }
                // Every group not yet known to be on disk is in doubt, earlier ones too: a
                // failed write-back may be reported to one sync only, and another sync, still
                // running for an earlier group, could then succeed without its pages.
                let from = (ended.durable + 1).min(group);
                if ended.unsynced_from.as_ref().is_none_or(|(first, _)| from < *first) {
                    ended.unsynced_from = Some((from, e.to_string()));
                }
            }
        }
        self.committed.notify_all();
    }

    /// Run `f` in a savepoint of the group: when it fails, only what it wrote is rolled back.
    fn run_careful<T, E>(&self, st: &mut WriterState, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Ran<T, E>
    where
        E: From<StoreError>,
    {
        if let Err(e) = <DbConn as Connection>::TransactionManager::begin_transaction(&mut st.conn) {
            let committed = self.finish(st, false);
            return Ran::Done(Err(E::from(StoreError::from(e))), committed);
        }
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_collecting(&mut st.conn, f))) {
            Ok(outcome) => outcome,
            Err(panic) => {
                // The savepoint is rolled back (by `run_collecting`); the group still commits.
                if let Some(committed) = self.finish(st, false) {
                    self.sync(committed);
                }
                std::panic::resume_unwind(panic);
            }
        };
        let outcome = match outcome {
            Ok(value) => match <DbConn as Connection>::TransactionManager::commit_transaction(&mut st.conn) {
                Ok(()) => Ok(value),
                Err(e) => {
                    let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(&mut st.conn);
                    Err(E::from(StoreError::from(e)))
                }
            },
            Err(e) => {
                let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(&mut st.conn);
                Err(e)
            }
        };
        let committed = self.finish(st, outcome.is_ok());
        Ran::Done(outcome, committed)
    }

    /// Run `f` in the group's transaction itself. If it fails after changing rows, the group is
    /// rolled back ([`Self::roll_back`]) and it runs again.
    fn run_plain<T, E>(&self, st: &mut WriterState, f: impl FnOnce(&mut DbConn) -> Result<T, E>) -> Ran<T, E>
    where
        E: From<StoreError>,
    {
        let before = match total_changes(&mut st.conn) {
            Ok(n) => n,
            Err(e) => {
                let committed = self.finish(st, false);
                return Ran::Done(Err(E::from(e)), committed);
            }
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_collecting(&mut st.conn, f))) {
            Ok(Ok(value)) => {
                let committed = self.finish(st, true);
                Ran::Done(Ok(value), committed)
            }
            Ok(Err(e)) => {
                // SQLite ends the transaction itself on some failures (a full disk, an I/O
                // error): then the writer's transaction state is reset, and `finish` sees it.
                if let DbConn::Sqlite(c) = &mut st.conn {
                    let _ = c.batch_execute(NO_SUCH_SAVEPOINT);
                }
                if total_changes(&mut st.conn).is_ok_and(|n| n == before) {
                    let committed = self.finish(st, false);
                    return Ran::Done(Err(e), committed);
                }
                if st.size == 0 {
                    // The group holds no other write: rolling it back takes back only this one,
                    // and the group ends with nothing stored.
                    let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(&mut st.conn);
                    self.end_group(st);
                    remember(&mut self.lock_ended().empty, st.group);
                    self.committed.notify_all();
                    return Ran::Done(Err(e), None);
                }
                self.roll_back(st);
                Ran::Again
            }
            // `run_collecting` has rolled the group's transaction back.
            Err(panic) => {
                self.roll_back(st);
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// Roll the open group back for its writes to run again, each in a savepoint.
    fn roll_back(&self, st: &mut WriterState) {
        let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(&mut st.conn);
        tracing::info!(
            group = st.group,
            writes = st.size,
            "SQLite group rolled back after a failed write; its writes run again"
        );
        st.careful_until = st.group + CAREFUL_GROUPS;
        self.end_group(st);
        remember(&mut self.lock_ended().rolled_back, st.group);
        self.committed.notify_all();
    }

    /// After a write: count it, and commit the group unless another write is queued to join it;
    /// the group, if committed here (its WAL is the caller's to sync). If the savepoint could not
    /// be rolled back, the transaction is gone: the group failed.
    fn finish(&self, st: &mut WriterState, stored: bool) -> Option<u64> {
        if stored {
            st.size += 1;
        }
        let depth = <DbConn as Connection>::TransactionManager::transaction_manager_status_mut(&mut st.conn)
            .transaction_depth()
            .ok()
            .flatten()
            .map_or(0, |d| d.get());
        let broken = depth != 1;
        if !broken && self.queued.load(Ordering::SeqCst) > 0 && st.size < MAX_GROUP {
            return None;
        }
        let result = if broken {
            let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(&mut st.conn);
            Err("the transaction could not be kept after a failed write".to_string())
        } else {
            <DbConn as Connection>::TransactionManager::commit_transaction(&mut st.conn).map_err(|e| {
                let _ = <DbConn as Connection>::TransactionManager::rollback_transaction(&mut st.conn);
                e.to_string()
            })
        };
        self.end_group(st);
        match result {
            Ok(()) => Some(st.group),
            Err(why) => {
                tracing::error!(group = st.group, writes = st.size, "SQLite group commit failed");
                remember(&mut self.lock_ended().failed, (st.group, why));
                self.committed.notify_all();
                None
            }
        }
    }

    /// The open group's transaction has ended: start the WAL afresh if the checkpointer asked.
    fn end_group(&self, st: &mut WriterState) {
        st.open = false;
        if self.restart.swap(false, Ordering::AcqRel) {
            Self::restart_wal(&mut st.conn);
        }
    }

    /// Copy what is left of the WAL into the database and make the next write start it afresh:
    /// waits (at most [`RESTART_WAIT_MS`]) for the readers still reading it, while writes queue.
    fn restart_wal(conn: &mut DbConn) {
        let ran = conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {RESTART_WAIT_MS}; PRAGMA wal_checkpoint(RESTART); PRAGMA busy_timeout = {BUSY_TIMEOUT_MS};"
        ));
        if let Err(e) = ran {
            tracing::warn!(error = %e, "SQLite WAL restart failed; trying again later");
            let _ = conn.batch_execute(&format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS};"));
        }
    }
}

#[cfg(test)]
mod tests {
    /// The one number `sql` (`SELECT … AS n`) answers.
    fn number(conn: &mut super::DbConn, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::RunQueryDsl::get_result::<N>(diesel::sql_query(sql), conn).unwrap().n
    }

    /// A pool on a new SQLite database in `dir`, migrated.
    fn migrated_pool(dir: &tempfile::TempDir) -> super::Pool {
        let pool = super::connect(&format!("sqlite://{}", dir.path().join("store.db").display()), 2).unwrap();
        super::migrate(&pool).unwrap();
        pool
    }

    #[test]
    fn new_ids_are_uuids_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..2000).map(|_| super::new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids are not increasing");
        assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7)));
    }

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

    /// `.cargo/config.toml` builds SQLite with the query planner stability guarantee (without
    /// it every cached statement with `LIMIT ?` is compiled again each time it runs), and
    /// without the shared page cache and memory statistics, whose process-wide mutexes
    /// concurrent readers queued on.
    #[test]
    fn sqlite_is_built_with_stable_query_plans_and_private_page_caches() {
        #[derive(diesel::QueryableByName)]
        struct Used {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            used: i32,
        }
        use diesel::RunQueryDsl;
        let dir = tempfile::tempdir().unwrap();
        let pool = super::connect(&format!("sqlite://{}", dir.path().join("q.db").display()), 1).unwrap();
        let used = |option: &str| -> i32 {
            diesel::sql_query(format!("SELECT sqlite_compileoption_used('{option}') AS used"))
                .get_result::<Used>(&mut *pool.get().unwrap())
                .unwrap()
                .used
        };
        assert_eq!(used("ENABLE_QPSG"), 1, "SQLite was built without SQLITE_ENABLE_QPSG (see .cargo/config.toml)");
        assert_eq!(used("ENABLE_MEMORY_MANAGEMENT"), 0, "SQLite was built with one shared page cache");
        assert_eq!(used("DEFAULT_MEMSTATUS=0"), 1, "SQLite was built with memory statistics");
    }

    /// A savepoint that fails takes back its rows and its change-log entries; the write around it
    /// commits what it wrote itself.
    #[test]
    fn a_failed_savepoint_takes_back_only_its_own_writes_and_changes() {
        use diesel::connection::SimpleConnection;
        let dir = tempfile::tempdir().unwrap();
        let pool = migrated_pool(&dir);
        let mut conn = pool.get().unwrap();
        conn.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        let before = super::changes::last(&mut conn).unwrap();
        super::write_txn::<(), super::StoreError>(&mut conn, |c| {
            c.batch_execute("INSERT INTO t VALUES (1)")?;
            super::changes::record(c, "Task", "kept", 1, 0)?;
            let failed = super::savepoint::<(), super::StoreError>(c, |c| {
                c.batch_execute("INSERT INTO t VALUES (2)")?;
                super::changes::record(c, "Task", "taken-back", 2, 0)?;
                Err(super::StoreError::Unavailable("refused".into()))
            });
            assert!(failed.is_err());
            super::savepoint::<(), super::StoreError>(c, |c| Ok(c.batch_execute("INSERT INTO t VALUES (3)")?))
        })
        .unwrap();
        assert_eq!(number(&mut conn, "SELECT SUM(x) AS n FROM t"), 4, "rows 1 and 3 stay, 2 is rolled back");
        let page = super::changes::page(&mut conn, before, 10, None, &[], 10).unwrap();
        let ids: Vec<&str> = page.changes.iter().map(|c| c.resource_id.as_str()).collect();
        assert_eq!(ids, ["kept"]);
    }

    /// A decision made on a snapshot is known to be stale once a resource of a type it read has
    /// changed since: committed, or written earlier in the running transaction.
    #[test]
    fn changes_of_other_types_since_a_position_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let pool = migrated_pool(&dir);
        let mut conn = pool.get().unwrap();
        let seen = super::changes::last(&mut conn).unwrap();
        let except = ["ServiceRequest", "Task"];
        super::write_txn::<(), super::StoreError>(&mut conn, |c| {
            super::changes::record(c, "Task", "t1", 1, 0)?;
            super::changes::record(c, "ServiceRequest", "s1", 1, 0)
        })
        .unwrap();
        assert!(!super::changes::others_since(&mut conn, seen, except).unwrap());
        super::write_txn::<(), super::StoreError>(&mut conn, |c| {
            super::changes::append(c, "Consent", "c1", 2, 0)?;
            assert!(super::changes::others_since(c, seen, except)?, "a change earlier in the transaction");
            Ok(())
        })
        .unwrap();
        assert!(super::changes::others_since(&mut conn, seen, except).unwrap());
        let now = super::changes::last(&mut conn).unwrap();
        assert!(!super::changes::others_since(&mut conn, now, except).unwrap());
    }

    /// An update told the values it replaces rewrites only the search rows that changed (a row
    /// already there is no conflict); either way the rows left are exactly the new version's.
    #[test]
    fn an_update_leaves_exactly_the_new_versions_search_rows() {
        use super::resources::{self, Replaced, StoredResource};
        use super::schema::search_index;
        use diesel::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let pool = migrated_pool(&dir);
        let mut conn = pool.get().unwrap();
        let entries = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(p, v)| (p.to_string(), v.to_string())).collect()
        };
        let version = |v: i64| StoredResource {
            resource_type: "Patient".into(),
            id: "p1".into(),
            version_id: v,
            last_updated: v,
            body: "{}".into(),
        };
        let rows = |conn: &mut super::PooledConn| -> Vec<(String, String)> {
            search_index::table
                .filter(search_index::resource_type.eq("Patient"))
                .filter(search_index::resource_id.eq("p1"))
                .select((search_index::param, search_index::value))
                .order((search_index::param, search_index::value))
                .load(&mut **conn)
                .unwrap()
        };
        let body = serde_json::json!({});
        let v1 = entries(&[("gender", "female"), ("family", "doe"), ("identifier", "x|1"), ("family", "doe")]);
        let v2 = entries(&[("family", "doe"), ("gender", "male"), ("birthdate", "1950")]);
        let v3 = entries(&[("family", "roe")]);
        super::write_txn::<_, super::StoreError>(&mut conn, |c| {
            resources::insert_new(c, &version(1), &v1, &body)?;
            // A row the old values do not name (as an earlier release may have extracted them),
            // which the new version has too: kept, not a conflict.
            diesel::insert_into(search_index::table)
                .values((
                    search_index::resource_type.eq("Patient"),
                    search_index::resource_id.eq("p1"),
                    search_index::param.eq("gender"),
                    search_index::value.eq("male"),
                ))
                .execute(c)?;
            let replaced = Replaced { body: &body, index: &v1 };
            assert!(resources::update_if_version(c, &version(2), 1, &v2, Some(replaced), &body)?);
            Ok(())
        })
        .unwrap();
        assert_eq!(rows(&mut conn), entries(&[("birthdate", "1950"), ("family", "doe"), ("gender", "male")]));
        super::write_txn::<_, super::StoreError>(&mut conn, |c| {
            assert!(resources::update_if_version(c, &version(3), 2, &v3, None, &body)?);
            Ok(())
        })
        .unwrap();
        assert_eq!(rows(&mut conn), v3);
    }

    /// The writer leaves checkpoints to the checkpointer: what it commits reaches the database
    /// file without another write.
    #[test]
    fn the_checkpointer_copies_committed_writes_into_the_database_file() {
        use diesel::connection::SimpleConnection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let pool = super::connect(&format!("sqlite://{}", path.display()), 2).unwrap();
        let mut conn = pool.get().unwrap();
        conn.batch_execute("CREATE TABLE t (x TEXT)").unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for _ in 0..200 {
            super::write_txn::<(), super::StoreError>(&mut conn, |c| {
                Ok(c.batch_execute("INSERT INTO t VALUES (hex(randomblob(2000)))")?)
            })
            .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < before + 400_000 {
            assert!(std::time::Instant::now() < deadline, "the database file never received the WAL's pages");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Under writes and reads that never pause, the WAL does not grow without end: SQLite
    /// alone would start it afresh only at a moment when no reader is in it, which never comes.
    #[test]
    fn the_wal_starts_afresh_while_writes_and_reads_never_pause() {
        use diesel::connection::SimpleConnection;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let pool = super::connect(&format!("sqlite://{}", path.display()), 4).unwrap();
        pool.get().unwrap().batch_execute("CREATE TABLE t (x BLOB)").unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (pool, stop) = (pool.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut conn = pool.get().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let n = super::read_snapshot::<_, super::StoreError>(&mut conn, |c| {
                            Ok(number(c, "SELECT COALESCE(MAX(rowid), 0) AS n FROM t"))
                        });
                        assert!(n.unwrap() >= 0);
                    }
                })
            })
            .collect();
        // 96 MiB written in 64 KiB rows, six times the WAL length that is started afresh, and
        // over at least a second, so that the checkpointer has looked several times.
        let mut conn = pool.get().unwrap();
        let started = std::time::Instant::now();
        let mut written = 0;
        while written < 1536 || started.elapsed() < std::time::Duration::from_secs(1) {
            super::write_txn::<(), super::StoreError>(&mut conn, |c| {
                Ok(c.batch_execute("INSERT INTO t VALUES (randomblob(65536))")?)
            })
            .unwrap();
            written += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("w.db-wal")).unwrap().len();
        assert!(wal < 48 << 20, "the WAL grew to {} MiB for {} MiB written", wal >> 20, written >> 4);
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
        assert_eq!(number(&mut conn, "SELECT COUNT(*) AS n FROM t"), 1);
    }

    #[test]
    fn group_commit_answers_each_write_only_once_it_is_visible_and_keeps_refused_ones_out() {
        use diesel::connection::SimpleConnection;
        let dir = tempfile::tempdir().unwrap();
        let pool = super::connect(&format!("sqlite://{}", dir.path().join("g.db").display()), 8).unwrap();
        pool.get().unwrap().batch_execute("CREATE TABLE t (x INTEGER PRIMARY KEY)").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut conn = pool.get().unwrap();
                    for i in 0..40 {
                        let x = t * 1000 + i;
                        let refused = i % 7 == 3;
                        let r = super::write_txn::<(), super::StoreError>(&mut conn, |c| {
                            c.batch_execute(&format!("INSERT INTO t VALUES ({x})"))?;
                            if refused { Err(super::StoreError::Unique) } else { Ok(()) }
                        });
                        assert_eq!(r.is_err(), refused);
                        // Answered means committed: another connection of the pool sees it.
                        let seen = number(&mut conn, &format!("SELECT COUNT(*) AS n FROM t WHERE x = {x}"));
                        assert_eq!(seen, i64::from(!refused), "write {x}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(number(&mut pool.get().unwrap(), "SELECT COUNT(*) AS n FROM t"), 8 * (40 - 6));
        // A write that panics inside a group loses only its own rows; the writer goes on.
        let mut conn = pool.get().unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = super::write_txn::<(), super::StoreError>(&mut conn, |c| {
                c.batch_execute("INSERT INTO t VALUES (-1)").unwrap();
                panic!("inside the group");
            });
        }));
        assert!(panicked.is_err());
        super::write_txn::<(), super::StoreError>(&mut conn, |c| Ok(c.batch_execute("INSERT INTO t VALUES (-2)")?))
            .unwrap();
        assert_eq!(number(&mut conn, "SELECT COUNT(*) AS n FROM t WHERE x < 0"), 1);
    }

    /// The writer commits without SQLite's fsync and syncs the WAL file itself, as SQLite names
    /// it.
    #[test]
    fn the_writer_syncs_the_wal_file_sqlite_writes() {
        use diesel::RunQueryDsl;
        use diesel::connection::SimpleConnection;
        #[derive(diesel::QueryableByName)]
        struct Sync {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            synchronous: i32,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        let pool = super::connect(&format!("sqlite://{}", path.display()), 2).unwrap();
        let mut conn = pool.get().unwrap();
        conn.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        super::write_txn::<(), super::StoreError>(&mut conn, |c| Ok(c.batch_execute("INSERT INTO t VALUES (1)")?))
            .unwrap();
        let writer = pool.writer.clone().unwrap();
        let wal = writer.wal.clone().expect("a file database has a WAL to sync");
        assert_eq!(wal.canonicalize().unwrap(), dir.path().join("u.db-wal").canonicalize().unwrap());
        let on_writer: Sync = diesel::sql_query("PRAGMA synchronous").get_result(&mut writer.lock().conn).unwrap();
        assert_eq!(on_writer.synchronous, 1, "the writer's commits should leave the sync to it (NORMAL)");
        let on_reader: Sync = diesel::sql_query("PRAGMA synchronous").get_result(&mut *conn).unwrap();
        assert_eq!(on_reader.synchronous, 2, "other connections keep FULL");
        assert_eq!(writer.lock_ended().durable, writer.lock().group, "the committed group is marked on disk");
    }

    /// When the WAL cannot be synced (here: its file is gone), the group that needed it fails
    /// and the writer refuses every later write, instead of answering writes it cannot vouch for.
    #[test]
    fn a_wal_that_cannot_be_synced_fails_its_group_and_stops_writes() {
        use diesel::connection::SimpleConnection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let pool = super::connect(&format!("sqlite://{}", path.display()), 2).unwrap();
        let mut conn = pool.get().unwrap();
        conn.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        let insert = |conn: &mut super::PooledConn| {
            super::write_txn::<(), super::StoreError>(conn, |c| Ok(c.batch_execute("INSERT INTO t VALUES (1)")?))
        };
        insert(&mut conn).unwrap();
        std::fs::remove_file(dir.path().join("s.db-wal")).unwrap();
        let failed = insert(&mut conn).unwrap_err();
        assert!(matches!(failed, super::StoreError::Unavailable(ref why) if why.contains("synced")), "{failed:?}");
        let refused = insert(&mut conn).unwrap_err();
        assert!(matches!(refused, super::StoreError::Unavailable(_)), "{refused:?}");
        assert!(super::ping(&pool).is_err(), "a writer that takes no writes is not ready");
    }

    /// Writes share a group without savepoints: one refused before it wrote anything leaves the
    /// others of its group alone (each runs once); one refused after writing makes its group run
    /// again, and each of the others is still stored exactly once.
    #[test]
    fn a_write_refused_after_writing_makes_its_group_run_again_and_one_refused_before_does_not() {
        use diesel::connection::SimpleConnection;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let pool = super::connect(&format!("sqlite://{}", dir.path().join("r.db").display()), 8).unwrap();
        pool.get().unwrap().batch_execute("CREATE TABLE t (x INTEGER PRIMARY KEY)").unwrap();
        // Writers that hold the lock long enough for others to queue behind them.
        let run = |offset: i64, refuse: fn(i64) -> Option<bool>| -> (usize, usize) {
            let runs = std::sync::Arc::new(AtomicUsize::new(0));
            let (base, writes) = (pool.clone(), 6 * 30);
            let threads: Vec<_> = (0..6)
                .map(|t| {
                    let (pool, runs) = (base.clone(), runs.clone());
                    std::thread::spawn(move || {
                        let mut conn = pool.get().unwrap();
                        for i in 0..30 {
                            let x = offset + t * 1000 + i;
                            let r = super::write_txn::<(), super::StoreError>(&mut conn, |c| {
                                runs.fetch_add(1, Ordering::SeqCst);
                                if refuse(x) == Some(false) {
                                    return Err(super::StoreError::Unique);
                                }
                                c.batch_execute(&format!("INSERT INTO t VALUES ({x})"))?;
                                std::thread::sleep(std::time::Duration::from_micros(300));
                                if refuse(x) == Some(true) { Err(super::StoreError::Unique) } else { Ok(()) }
                            });
                            assert_eq!(r.is_err(), refuse(x).is_some(), "write {x}");
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            (runs.load(Ordering::SeqCst), writes)
        };
        // Every fifth write refused before writing: nothing runs twice.
        let (runs, writes) = run(0, |x| (x % 5 == 3).then_some(false));
        assert_eq!(runs, writes, "a write refused before writing made others run again");
        // Every fifth refused after writing: some writes ran again, none is stored twice or lost.
        let (runs, writes) = run(100_000, |x| (x % 5 == 3).then_some(true));
        assert!(runs > writes, "no group ran again although writes were refused after writing");
        let stored = number(&mut pool.get().unwrap(), "SELECT COUNT(*) AS n FROM t");
        assert_eq!(stored, 2 * (6 * 30 - 6 * 6), "the accepted writes of both runs, once each");
    }
}
