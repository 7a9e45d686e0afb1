//! `fanout publish`: the `Publisher` library type on the command line.
//!
//! Membership comes from `--endpoints`, `--endpoints-file` (followed live) or `--group`
//! (the Kubernetes source). Messages are either `--count` synthetic payloads of `--size` bytes
//! or one payload per line of stdin. A summary goes to stdout at the end.

use crate::membership::{MembershipSource, StaticSource, file::FileSource, kubernetes};
use crate::publisher::command::PublishRun;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Proxy endpoints, comma separated (`tcp://IP:PORT,...`).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["endpoints_file", "group"], required_unless_present_any = ["endpoints_file", "group"])]
    pub endpoints: Vec<String>,
    /// File of `tcp://IP:PORT` lines (e.g. the group's ConfigMap mounted as a volume), followed live.
    #[arg(long, conflicts_with = "group")]
    pub endpoints_file: Option<PathBuf>,
    /// FanoutGroup to follow through the Kubernetes API.
    #[arg(long)]
    pub group: Option<String>,
    /// Namespace of `--group` (default: the client's namespace).
    #[arg(long, short = 'n', requires = "group")]
    pub namespace: Option<String>,
    /// Topic (frame 0) of every message.
    #[arg(long, default_value = "fanout")]
    pub topic: String,
    /// Send this many synthetic messages instead of reading stdin.
    #[arg(long)]
    pub count: Option<u64>,
    /// Messages per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Size in bytes of each synthetic payload.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Send high-water mark per proxy (ZeroMQ messages: a frame of several is one).
    #[arg(long, default_value_t = 100_000)]
    pub hwm: i32,
    /// Largest frame made of several messages queued one after the other on the topic (wire
    /// version 4); 0 sends one message a frame (for subscribers older than version 4). With
    /// `--group`, lowered at start to what the group's proxies accept (its `maxMessageBytes`
    /// less 33 bytes for CURVE) as the controller publishes it, and 0 when it publishes none;
    /// otherwise keep it that far under the cap. Restart publishers after lowering a group's
    /// `maxMessageBytes` below it.
    #[arg(long, default_value_t = crate::publisher::DEFAULT_BATCH_MAX_BYTES)]
    pub batch_bytes: usize,
    /// Seconds to wait for a first non-empty membership before publishing.
    #[arg(long, default_value_t = 10.0)]
    pub wait_membership: f64,
    /// Seconds to wait after connecting so that subscriptions reach us (a PUB drops messages
    /// no subscriber asked for yet).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Seconds `close` may spend flushing unsent messages.
    #[arg(long, default_value_t = 5.0)]
    pub linger: f64,
    /// Serve `/healthz`, `/readyz` and `/metrics` (the publisher's counters) on this address
    /// while publishing, e.g. `127.0.0.1:9103`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    #[command(flatten)]
    pub curve: CurveClientArgs,
}

/// The client side of CURVE, shared by `fanout publish` and `fanout subscribe`.
#[derive(clap::Args, Debug, Clone)]
pub struct CurveClientArgs {
    /// CURVE: our secret key (Z85, from `fanout keygen`; not readable by others). Our public
    /// key, derived from it, must be in the proxy's allow-list.
    #[arg(long, value_name = "FILE")]
    pub curve_secret_key_file: Option<PathBuf>,
    /// CURVE: the proxy's public key (Z85); a server with another key is refused. With
    /// `fanout publish --group` it may be left out: the key the controller publishes with the
    /// group's EndpointSlices is used.
    // Z85 has '-' in its alphabet, so about one key in 85 starts with it: a value, not a flag.
    #[arg(
        long,
        value_name = "KEY",
        requires = "curve_secret_key_file",
        allow_hyphen_values = true
    )]
    pub proxy_public_key: Option<crate::curve::PublicKey>,
}

impl CurveClientArgs {
    /// The CURVE client the flags ask for, `published` being the group's published server key
    /// when `--proxy-public-key` is absent (None: nowhere to learn it from).
    pub fn client(
        &self,
        published: impl FnOnce() -> crate::Result<Option<crate::curve::PublicKey>>,
    ) -> crate::Result<Option<crate::curve::CurveClient>> {
        let Some(file) = &self.curve_secret_key_file else {
            return Ok(None);
        };
        let server = match self.proxy_public_key {
            Some(server) => server,
            None => published()?.ok_or(crate::Error::MissingProxyPublicKey)?,
        };
        Ok(Some(crate::curve::CurveClient::from_files(file, server)?))
    }
}

/// `--NAME VALUE` seconds as a duration.
pub fn seconds(name: &str, value: f64) -> crate::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|source| crate::Error::InvalidSeconds {
        flag: name.to_string(),
        value,
        source,
    })
}

impl PublishArgs {
    fn source(&self) -> crate::Result<Box<dyn MembershipSource>> {
        if let Some(path) = &self.endpoints_file {
            Ok(Box::new(FileSource::new(path.clone())))
        } else if let Some(group) = &self.group {
            Ok(kubernetes::source_for_group(
                self.namespace.clone(),
                group.clone(),
            )?)
        } else {
            Ok(Box::new(StaticSource::new(
                self.endpoints.iter().map(|e| e.trim().to_string()),
            )?))
        }
    }

    /// `--batch-bytes`, within what the group's proxies accept when following a group: the cap
    /// the controller publishes, or one message a frame when it publishes none (a frame above
    /// the cap would end the connection).
    fn batch_max_bytes(&self) -> crate::Result<usize> {
        let Some(group) = self.group.as_ref().filter(|_| self.batch_bytes > 0) else {
            return Ok(self.batch_bytes);
        };
        let wait = seconds("wait-membership", self.wait_membership)?;
        let cap = crate::runtime::block_on(kubernetes::group_max_message_bytes(
            self.namespace.clone(),
            group,
            wait,
        ))?
        .map_err(crate::Error::GroupMessageCap)?;
        Ok(match cap {
            Some(cap) => {
                let bytes = self.batch_bytes.min(crate::publisher::batch_bytes_within(cap));
                tracing::info!(%group, max_message_bytes = cap, batch_bytes = bytes, "frames of several messages stay within the group's cap");
                bytes
            }
            None => {
                tracing::warn!(%group, "the group's slices do not say its maxMessageBytes (none yet, or an older controller): one message a frame");
                0
            }
        })
    }

    pub fn run(self) -> crate::Result<()> {
        let batch_max_bytes = self.batch_max_bytes()?;
        let run = PublishRun {
            source: self.source()?,
            topic: self.topic,
            count: self.count,
            rate: self.rate,
            size: self.size,
            hwm: self.hwm,
            batch_max_bytes,
            wait_membership: seconds("wait-membership", self.wait_membership)?,
            settle: seconds("settle", self.settle)?,
            linger: seconds("linger", self.linger)?,
            curve: self.curve.client(|| match &self.group {
                // The proxies' key as the controller publishes it with the group.
                Some(group) => {
                    let wait = seconds("wait-membership", self.wait_membership)?;
                    let found = crate::runtime::block_on(kubernetes::group_server_key(
                        self.namespace.clone(),
                        group,
                        wait,
                    ))??;
                    Ok(Some(found))
                }
                None => Ok(None),
            })?,
            http: self.http,
        };
        Ok(crate::publisher::command::run(run)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        curve: CurveClientArgs,
    }

    #[test]
    fn a_proxy_key_that_starts_with_a_hyphen_is_a_value() {
        // A valid Z85 key (40 characters) whose first character is '-'.
        let key = format!("-{}", "0".repeat(39));
        assert!(
            crate::curve::PublicKey::from_z85(&key).is_ok(),
            "the test key is valid Z85"
        );
        let cli = Cli::try_parse_from([
            "publish",
            "--curve-secret-key-file",
            "/k",
            "--proxy-public-key",
            &key,
        ])
        .expect("a key starting with '-' parses");
        assert_eq!(cli.curve.proxy_public_key.map(|k| k.to_z85()), Some(key));
    }
}
