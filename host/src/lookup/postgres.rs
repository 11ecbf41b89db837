//! PostgreSQL lookups: a configured query with one parameter (`$1`, the key); the first row is
//! the value, as a JSON object of its columns (PostgreSQL's own `row_to_json`, so every column
//! type converts the way PostgreSQL says). The connection is made on first use and re-made
//! after it breaks.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_postgres::types::Type;

use super::{Connector, Fetched, Loaded, LookupError};
use crate::config::LookupStoreConfig;

/// A PostgreSQL store.
pub(crate) struct PgStore {
    url: String,
    query: String,
    load: Option<String>,
    conn: Arc<Mutex<Option<Conn>>>,
}

struct Conn {
    client: Arc<tokio_postgres::Client>,
    lookup: tokio_postgres::Statement,
}

impl PgStore {
    pub(crate) fn new(cfg: &LookupStoreConfig) -> anyhow::Result<PgStore> {
        let url = cfg.url.clone().unwrap_or_default();
        url.parse::<tokio_postgres::Config>().map_err(|e| {
            anyhow::anyhow!("lookup store: `{url}` is not a PostgreSQL connection string: {e}")
        })?;
        Ok(PgStore {
            url,
            query: cfg.query.clone().unwrap_or_default(),
            load: cfg.load.clone(),
            conn: Arc::default(),
        })
    }
}

async fn connect(
    url: &str,
    query: &str,
    slot: &Mutex<Option<Conn>>,
) -> Result<(Arc<tokio_postgres::Client>, tokio_postgres::Statement), LookupError> {
    let mut guard = slot.lock().await;
    if let Some(c) = guard.as_ref()
        && !c.client.is_closed()
    {
        return Ok((c.client.clone(), c.lookup.clone()));
    }
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| pg_error("cannot connect to PostgreSQL", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection closed: {e}");
        }
    });
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({query}) AS q LIMIT 1");
    let lookup = client
        .prepare(&wrapped)
        .await
        .map_err(|e| pg_error("PostgreSQL rejected the lookup query", &e))?;
    let client = Arc::new(client);
    *guard = Some(Conn {
        client: client.clone(),
        lookup: lookup.clone(),
    });
    Ok((client, lookup))
}

/// A PostgreSQL error: the server refusing the statement (an SQL error it reports) is not
/// worth retrying; a connection that failed is.
fn pg_error(what: &str, e: &tokio_postgres::Error) -> LookupError {
    let text = format!("{what}: {e}");
    if e.as_db_error().is_some() {
        LookupError::Refused(text)
    } else {
        LookupError::Unavailable(text)
    }
}

/// Runs the lookup for one key, converting it to the parameter's type.
async fn lookup_one(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    key: &str,
) -> Result<Option<Vec<u8>>, LookupError> {
    let param = stmt.params().first().cloned().unwrap_or(Type::TEXT);
    let row = match param {
        Type::INT2 | Type::INT4 | Type::INT8 => {
            let n: i64 = match key.parse() {
                Ok(n) => n,
                // Not a number: no row can match.
                Err(_) => return Ok(None),
            };
            match param {
                Type::INT2 => client.query_opt(stmt, &[&(n as i16)]).await,
                Type::INT4 => client.query_opt(stmt, &[&(n as i32)]).await,
                _ => client.query_opt(stmt, &[&n]).await,
            }
        }
        _ => client.query_opt(stmt, &[&key]).await,
    }
    .map_err(|e| pg_error("PostgreSQL", &e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .map(String::into_bytes))
}

impl Connector for PgStore {
    fn get_many(&self, keys: Vec<String>) -> BoxFuture<'static, Fetched> {
        let (url, query, slot) = (self.url.clone(), self.query.clone(), self.conn.clone());
        async move {
            let (client, stmt) = connect(&url, &query, &slot).await?;
            let gets = keys.iter().map(|k| lookup_one(&client, &stmt, k));
            let result: Fetched = futures::future::join_all(gets).await.into_iter().collect();
            if result.is_err() && client.is_closed() {
                *slot.lock().await = None;
            }
            result
        }
        .boxed()
    }

    fn load_all(&self) -> BoxFuture<'static, Loaded> {
        let (url, query, slot, load) = (
            self.url.clone(),
            self.query.clone(),
            self.conn.clone(),
            self.load.clone(),
        );
        async move {
            let load = load
                .ok_or_else(|| LookupError::Refused("no `load` query for a full cache".into()))?;
            let (client, _) = connect(&url, &query, &slot).await?;
            let rows = client
                .query(
                    &format!("SELECT k::text, v::text FROM ({load}) AS t(k, v)"),
                    &[],
                )
                .await
                .map_err(|e| pg_error("PostgreSQL load query", &e))?;
            Ok(rows
                .into_iter()
                .filter_map(|r| {
                    let k: Option<String> = r.get(0);
                    let v: Option<String> = r.get(1);
                    Some((k?, v?.into_bytes()))
                })
                .collect())
        }
        .boxed()
    }
}
