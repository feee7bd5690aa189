//! Start-up and the HTTP server: `Application::build(settings)` connects to the database,
//! runs migrations, loads the directory and the configured clients, binds the port (0 = any
//! free port, for tests) and returns; `run_until_stopped` serves until the process is told to
//! stop.

use std::net::TcpListener;
use std::time::Instant;

use actix_web::dev::Server;
use actix_web::{App, HttpServer};

use crate::api;
use crate::config::{RunMode, Settings};
use crate::delivery::worker::{Worker, WorkerSettings};
use crate::fhir::TYPES;
use crate::fhir::schema::StructureValidator;
use crate::gateway::{Gateway, directory};
use crate::sandbox;
use crate::store::{self, Pool, clients};

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    pool: Pool,
}

/// Open the database named by the settings and bring its schema up to date.
pub fn open_database(settings: &Settings) -> anyhow::Result<Pool> {
    let pool = store::connect(&settings.database.url, settings.database.pool_size)?;
    let applied = store::migrate(&pool)?;
    if !applied.is_empty() {
        tracing::info!(migrations = ?applied, "migrations applied");
    }
    Ok(pool)
}

/// The id prefix of clients declared in the configuration.
const CONFIG_CLIENT_PREFIX: &str = "config-";

/// Bring the registered clients in line with the settings: the clients declared in the
/// configuration are created or replaced and those no longer declared are removed; the public
/// sandbox clients are registered in sandbox mode and removed in production mode. Clients added
/// with `signpost client add` are left alone.
pub fn register_clients(pool: &Pool, settings: &Settings) -> anyhow::Result<()> {
    let mut conn = pool.get()?;
    let now = crate::fhir::now_ms();
    for c in &settings.clients {
        clients::upsert_by_name(
            &mut conn,
            &clients::ClientRow {
                id: format!("{CONFIG_CLIENT_PREFIX}{}", c.name),
                name: c.name.clone(),
                role: c.role.as_str().to_string(),
                organization_id: c.organization.clone(),
                key_hash: c.key_sha256.clone(),
                created_at: now,
            },
        )?;
    }
    let declared: Vec<&str> = settings.clients.iter().map(|c| c.name.as_str()).collect();
    let dropped = clients::remove_stale(&mut conn, CONFIG_CLIENT_PREFIX, &declared)?;
    if dropped > 0 {
        tracing::info!(dropped, "clients no longer in the configuration removed");
    }
    let sandbox_names: Vec<&str> = match settings.mode {
        RunMode::Sandbox => {
            for c in sandbox::CLIENTS {
                clients::upsert_by_name(
                    &mut conn,
                    &clients::ClientRow {
                        id: format!("{}{}", sandbox::CLIENT_ID_PREFIX, c.name),
                        name: c.name.to_string(),
                        role: c.role.as_str().to_string(),
                        organization_id: c.organization.to_string(),
                        key_hash: crate::auth::hash_key(c.key),
                        created_at: now,
                    },
                )?;
            }
            sandbox::CLIENTS.iter().map(|c| c.name).collect()
        }
        RunMode::Production => Vec::new(),
    };
    let removed = clients::remove_stale(&mut conn, sandbox::CLIENT_ID_PREFIX, &sandbox_names)?;
    if removed > 0 {
        tracing::warn!(removed, "public sandbox clients removed (production mode)");
    }
    Ok(())
}

/// Load the directory: the configured folder (which must exist), else in sandbox mode the
/// embedded example directory, else nothing.
pub fn load_directory(pool: &Pool, settings: &Settings) -> anyhow::Result<()> {
    let dir = &settings.directory.path;
    if !dir.as_os_str().is_empty() {
        if !dir.is_dir() {
            anyhow::bail!("directory.path: the folder {} does not exist", dir.display());
        }
        let loaded = load_directory_files(pool, settings, &directory::read_files(dir)?, directory::Overwrite::Yes)?;
        tracing::info!(path = %dir.display(), created = loaded.created, updated = loaded.updated, "directory loaded");
    } else if settings.mode == RunMode::Sandbox {
        let files: Vec<(String, String)> = sandbox::DIRECTORY
            .iter()
            .map(|(name, text)| (format!("examples/directory/{name}"), text.to_string()))
            .collect();
        let loaded = directory::load_files(pool, &files, settings.allow_loopback_webhooks(), directory::Overwrite::No)?;
        tracing::info!(created = loaded.created, updated = loaded.updated, "example directory loaded (sandbox mode)");
    }
    Ok(())
}

/// Load directory files as `settings` allow: a production configuration refuses any file that
/// holds sandbox data (resources tagged by the sandbox), so sandbox charities never reach it.
pub fn load_directory_files(
    pool: &Pool,
    settings: &Settings,
    files: &[(String, String)],
    overwrite: directory::Overwrite,
) -> anyhow::Result<directory::Loaded> {
    if settings.mode == RunMode::Production
        && let Some(name) = sandbox::marked(files)
    {
        anyhow::bail!(
            "{name} holds sandbox data (meta.tag {}); a production configuration never loads it",
            sandbox::simulator::TAG_SYSTEM
        );
    }
    directory::load_files(pool, files, settings.allow_loopback_webhooks(), overwrite)
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let started = Instant::now();
        if settings.mode == RunMode::Sandbox {
            tracing::warn!(
                "SANDBOX MODE: the example directory and the PUBLIC sandbox API keys printed in the README are \
                 active; listening on loopback only. Use a configuration file (mode = \"production\") for real data"
            );
        }
        let validator = StructureValidator::shared();
        let types: Vec<&str> = TYPES.iter().map(|t| t.name).chain(["Bundle"]).collect();
        validator.warm(&types).map_err(anyhow::Error::msg)?;
        tracing::info!(ms = started.elapsed().as_millis() as u64, "structure validators compiled");

        let pool = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<Pool> {
                let pool = open_database(&settings)?;
                load_directory(&pool, &settings)?;
                register_clients(&pool, &settings)?;
                Ok(pool)
            })
            .await??
        };

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))?;
        let port = listener.local_addr()?.port();
        let base = format!("{}/fhir", settings.server.base_url(port));
        let simulator = if settings.mode == RunMode::Sandbox && settings.sandbox.charities {
            let (pool, root) = (pool.clone(), settings.server.base_url(port));
            let sim = tokio::task::spawn_blocking(move || sandbox::install(&pool, &root)).await??;
            tracing::warn!(
                "SANDBOX MODE: simulated charities sandbox-charity-webhook and sandbox-charity-polling are answering referrals"
            );
            Some(sim)
        } else {
            None
        };
        let mut gateway = Gateway::new(pool.clone(), settings.limits, settings.validation.mode);
        gateway.allow_loopback_webhooks = settings.allow_loopback_webhooks();
        gateway.production = settings.mode == RunMode::Production;
        if settings.delivery.enabled {
            let worker = Worker::new(pool.clone(), WorkerSettings::from_settings(&settings), gateway.wake.clone());
            tokio::spawn(worker.run());
        }
        let state = api::state(gateway, base);
        let sim_data = simulator.clone().map(actix_web::web::Data::new);
        let server = HttpServer::new(move || {
            let sim_data = sim_data.clone();
            App::new()
                .app_data(state.clone())
                .wrap(actix_web::middleware::from_fn(api::correlate))
                .configure(move |cfg| {
                    if let Some(sim) = sim_data {
                        cfg.app_data(sim).route("/sandbox/hook", actix_web::web::post().to(sandbox::simulator::hook));
                    }
                })
                .configure(api::configure)
        })
        .workers(settings.server.workers)
        .disable_signals()
        .shutdown_timeout(30)
        .listen(listener)?
        .run();
        if let Some(sim) = simulator {
            tokio::spawn(sim.poll());
        }
        tracing::info!(port, ms = started.elapsed().as_millis() as u64, "Signpost listening");
        Ok(Application { port, server, pool })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Serve until SIGINT/SIGTERM, then finish in-flight requests (graceful shutdown).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            handle.stop(true).await;
        });
        self.server.await
    }

    /// Serve in the background (tests); the server stops when the runtime ends.
    pub fn spawn(self) -> u16 {
        let port = self.port;
        tokio::spawn(self.server);
        port
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
