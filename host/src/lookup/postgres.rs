//! PostgreSQL lookups: a configured query with one parameter (`$1`, the key); the first row is
//! the value, as a JSON object of its columns (PostgreSQL's own `row_to_json`, so every column
//! type converts the way PostgreSQL says). The connection is made on first use and re-made
//! after it breaks.
//!
//! Keys asked together go in one statement: at connect, the query becomes a function of the
//! session (`pg_temp`, gone with the connection) whose parameter is the query's `$1`, and a
//! batch is `SELECT k, f(k) FROM unnest($1)`: one execution for the whole batch, where one
//! statement per key costs the server a bind and an execution each. PostgreSQL substitutes the
//! parameter itself, so the query is never rewritten as text. Where the session may not create
//! the function (no TEMP privilege), keys are asked one statement each, pipelined on the one
//! connection.

use std::collections::HashMap;
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

/// One connection with its statements.
#[derive(Clone)]
struct Conn {
    client: Arc<tokio_postgres::Client>,
    /// The query for one key.
    lookup: tokio_postgres::Statement,
    /// The type of its parameter, `$1`.
    param: Type,
    /// The query for many keys (a text array), where the session function could be made.
    batch: Option<tokio_postgres::Statement>,
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

async fn connect(url: &str, query: &str, slot: &Mutex<Option<Conn>>) -> Result<Conn, LookupError> {
    let mut guard = slot.lock().await;
    if let Some(c) = guard.as_ref()
        && !c.client.is_closed()
    {
        return Ok(c.clone());
    }
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| pg_error("cannot connect to PostgreSQL", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection closed: {e}");
        }
    });
    let one_row = format!("SELECT row_to_json(q)::text FROM ({query}) AS q LIMIT 1");
    let lookup = client
        .prepare(&one_row)
        .await
        .map_err(|e| pg_error("PostgreSQL rejected the lookup query", &e))?;
    let param = lookup.params().first().cloned().unwrap_or(Type::TEXT);
    let batch = match batch_statement(&client, &one_row, &param).await {
        Ok(stmt) => Some(stmt),
        Err(e) => {
            tracing::info!(
                "PostgreSQL lookups go one statement per key: the session function for batches could not be made ({e})"
            );
            None
        }
    };
    let conn = Conn {
        client: Arc::new(client),
        lookup,
        param,
        batch,
    };
    *guard = Some(conn.clone());
    Ok(conn)
}

/// Makes the session function `pg_temp.eddy_lookup(<the parameter's type>)` from the one-row
/// query and prepares the batch statement over it: keys go as text and are cast to the
/// parameter's type inside PostgreSQL.
async fn batch_statement(
    client: &tokio_postgres::Client,
    one_row: &str,
    param: &Type,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    // A dollar-quote tag the query does not contain.
    let tag = (0..)
        .map(|i| format!("$eddy{i}$"))
        .find(|t| !one_row.contains(t.as_str()))
        .unwrap_or_default();
    let ty = format!("\"{}\".\"{}\"", param.schema(), param.name());
    client
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION pg_temp.eddy_lookup({ty}) RETURNS text LANGUAGE sql AS {tag}{one_row}{tag}"
        ))
        .await?;
    client
        .prepare(&format!(
            "SELECT u.k, pg_temp.eddy_lookup(u.k::{ty}) FROM unnest($1::text[]) AS u(k)"
        ))
        .await
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

/// A key as the value of an integer parameter, or `None` when it is not a number of that
/// type's range: no row can match it (and it must not be cut down to one that does).
fn integer_key(param: &Type, key: &str) -> Option<i64> {
    let n: i64 = key.parse().ok()?;
    let fits = match *param {
        Type::INT2 => i16::try_from(n).is_ok(),
        Type::INT4 => i32::try_from(n).is_ok(),
        _ => true,
    };
    fits.then_some(n)
}

fn is_integer(param: &Type) -> bool {
    matches!(*param, Type::INT2 | Type::INT4 | Type::INT8)
}

/// Runs the lookup for one key, converting it to the parameter's type.
async fn lookup_one(conn: &Conn, key: &str) -> Result<Option<Vec<u8>>, LookupError> {
    let (client, stmt, param) = (&conn.client, &conn.lookup, &conn.param);
    let row = if is_integer(param) {
        let Some(n) = integer_key(param, key) else {
            return Ok(None);
        };
        match *param {
            Type::INT2 => client.query_opt(stmt, &[&(n as i16)]).await,
            Type::INT4 => client.query_opt(stmt, &[&(n as i32)]).await,
            _ => client.query_opt(stmt, &[&n]).await,
        }
    } else {
        client.query_opt(stmt, &[&key]).await
    }
    .map_err(|e| pg_error("PostgreSQL", &e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .map(String::into_bytes))
}

/// Runs the lookup for many keys in one statement.
async fn lookup_batch(conn: &Conn, batch: &tokio_postgres::Statement, keys: &[String]) -> Fetched {
    let param = &conn.param;
    // Keys an integer parameter cannot take match nothing, and would fail the cast for all.
    let asked: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| !is_integer(param) || integer_key(param, k).is_some())
        .collect();
    let rows = conn
        .client
        .query(batch, &[&asked])
        .await
        .map_err(|e| pg_error("PostgreSQL", &e))?;
    let mut found: HashMap<String, Vec<u8>> = HashMap::with_capacity(rows.len());
    for row in rows {
        let key: String = row.get(0);
        if let Some(value) = row.get::<_, Option<String>>(1) {
            found.insert(key, value.into_bytes());
        }
    }
    Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
}

impl Connector for PgStore {
    fn get_many(&self, keys: Vec<String>) -> BoxFuture<'static, Fetched> {
        let (url, query, slot) = (self.url.clone(), self.query.clone(), self.conn.clone());
        async move {
            let conn = connect(&url, &query, &slot).await?;
            let result: Fetched = match &conn.batch {
                Some(batch) if keys.len() > 1 => lookup_batch(&conn, batch, &keys).await,
                _ => {
                    let gets = keys.iter().map(|k| lookup_one(&conn, k));
                    futures::future::join_all(gets).await.into_iter().collect()
                }
            };
            if result.is_err() && conn.client.is_closed() {
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
            let conn = connect(&url, &query, &slot).await?;
            let rows = conn
                .client
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
