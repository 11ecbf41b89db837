//! HTTP lookups: `GET` on a URL template; 200 is the value (the body), 404 is "not found",
//! 5xx and 429 are passing failures (retried), any other status a refusal.

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Connector, Fetched, Loaded, LookupError, url_encode};
use crate::config::LookupStoreConfig;

/// An HTTP store.
pub(crate) struct HttpStore {
    client: reqwest::Client,
    template: String,
    load: Option<String>,
}

impl HttpStore {
    pub(crate) fn new(cfg: &LookupStoreConfig) -> anyhow::Result<HttpStore> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| anyhow::anyhow!("lookup header `{k}`: {e}"))?,
                reqwest::header::HeaderValue::from_str(v)
                    .map_err(|e| anyhow::anyhow!("lookup header `{k}`: {e}"))?,
            );
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(HttpStore {
            client,
            template: cfg.url_template.clone().unwrap_or_default(),
            load: cfg.load.clone(),
        })
    }
}

async fn get_one(client: reqwest::Client, url: String) -> Result<Option<Vec<u8>>, LookupError> {
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| LookupError::Unavailable(format!("GET {url}: {e}")))?;
    match resp.status() {
        s if s.is_success() => resp
            .bytes()
            .await
            .map(|b| Some(b.to_vec()))
            .map_err(|e| LookupError::Unavailable(format!("GET {url}: {e}"))),
        reqwest::StatusCode::NOT_FOUND => Ok(None),
        s if s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS => {
            Err(LookupError::Unavailable(format!("GET {url}: HTTP {s}")))
        }
        s => Err(LookupError::Refused(format!("GET {url}: HTTP {s}"))),
    }
}

impl Connector for HttpStore {
    fn get_many(&self, keys: Vec<String>) -> BoxFuture<'static, Fetched> {
        let gets: Vec<_> = keys
            .iter()
            .map(|k| {
                let url = self.template.replace("{key}", &url_encode(k));
                get_one(self.client.clone(), url)
            })
            .collect();
        async move { futures::future::join_all(gets).await.into_iter().collect() }.boxed()
    }

    fn shares_round_trips(&self) -> bool {
        // One request per key: a batch would wait for its slowest.
        false
    }

    fn load_all(&self) -> BoxFuture<'static, Loaded> {
        let (client, load) = (self.client.clone(), self.load.clone());
        async move {
            let url =
                load.ok_or_else(|| LookupError::Refused("no `load` URL for a full cache".into()))?;
            let body = get_one(client, url.clone())
                .await?
                .ok_or_else(|| LookupError::Refused(format!("GET {url}: not found")))?;
            let all: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
                .map_err(|e| {
                    LookupError::Refused(format!(
                        "GET {url}: not a JSON object of key to value: {e}"
                    ))
                })?;
            Ok(all
                .into_iter()
                .map(|(k, v)| (k, serde_json::to_vec(&v).unwrap_or_default()))
                .collect())
        }
        .boxed()
    }
}
