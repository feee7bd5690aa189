//! The ceiling of Signpost's own stack, for the load benchmarks (BENCHMARKS.md): a minimal
//! actix-web server that parses the POSTed JSON with serde_json and answers 201, and optionally
//! also inserts the raw JSON as one row per request, durably (SQLite WAL with
//! `synchronous=FULL`, or PostgreSQL with `synchronous_commit` on), through diesel and r2d2 as
//! Signpost does. Signpost's figures are reported as ratios of these.
//!
//!     cargo run --release --example ceiling -- PORT parse
//!     cargo run --release --example ceiling -- PORT sqlite /tmp/ceiling.db
//!     cargo run --release --example ceiling -- PORT postgres postgres://postgres@127.0.0.1:5432/test

use actix_web::{App, HttpResponse, HttpServer, web};
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[derive(Clone)]
enum Store {
    None,
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

async fn create(store: web::Data<Store>, body: web::Bytes) -> HttpResponse {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let text = value.to_string();
    let store = store.get_ref().clone();
    let done = web::block(move || -> Result<(), String> {
        let id = uuid::Uuid::new_v4().to_string();
        match store {
            Store::None => Ok(()),
            Store::Sqlite(pool) => {
                let mut c = pool.get().map_err(|e| e.to_string())?;
                diesel::sql_query("INSERT INTO ceiling (id, body) VALUES (?, ?)")
                    .bind::<diesel::sql_types::Text, _>(id)
                    .bind::<diesel::sql_types::Text, _>(text)
                    .execute(&mut c)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Store::Postgres(pool) => {
                let mut c = pool.get().map_err(|e| e.to_string())?;
                diesel::sql_query("INSERT INTO ceiling (id, body) VALUES ($1, $2)")
                    .bind::<diesel::sql_types::Text, _>(id)
                    .bind::<diesel::sql_types::Text, _>(text)
                    .execute(&mut c)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await;
    match done {
        Ok(Ok(())) => HttpResponse::Created().content_type("application/fhir+json").body("{}"),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
    let store = match args.get(2).map(String::as_str) {
        Some("sqlite") => {
            let path = args.get(3).expect("sqlite PATH");
            let pool = Pool::builder()
                .max_size(8)
                .connection_customizer(Box::new(SqlitePragmas))
                .build(ConnectionManager::<SqliteConnection>::new(path))
                .expect("sqlite");
            pool.get()
                .unwrap()
                .batch_execute("CREATE TABLE IF NOT EXISTS ceiling (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
                .unwrap();
            Store::Sqlite(pool)
        }
        Some("postgres") => {
            let url = args.get(3).expect("postgres URL");
            let mut c = PgConnection::establish(url).expect("postgres");
            c.batch_execute(
                "DROP TABLE IF EXISTS ceiling; CREATE TABLE ceiling (id TEXT PRIMARY KEY, body TEXT NOT NULL)",
            )
            .unwrap();
            Store::Postgres(
                Pool::builder().max_size(8).build(ConnectionManager::<PgConnection>::new(url)).expect("pool"),
            )
        }
        _ => Store::None,
    };
    let data = web::Data::new(store);
    HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .route("/fhir/ServiceRequest", web::post().to(create))
            .route("/fhir", web::post().to(create))
    })
    .workers(2)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
