//! `fanout subscribe`: the `Subscriber` library type on the command line.

use crate::subscriber::TopicFilter;
use crate::subscriber::command::SubscribeRun;

#[derive(clap::Args, Debug)]
pub struct SubscribeArgs {
    /// Proxy subscriber endpoint (`ipc:///var/run/fanout/ns.name.sock` or `tcp://IP:PORT`).
    #[arg(long)]
    pub connect: String,
    /// Exact topic (repeatable). `foo` never delivers `foobar`.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Topic prefix (repeatable). With no --topic and no --prefix, everything is received.
    #[arg(long = "prefix")]
    pub prefixes: Vec<String>,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Receive high-water mark (messages).
    #[arg(long, default_value_t = 100_000)]
    pub hwm: i32,
    /// Print nothing per message, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Every this many seconds, print a `stats {json}` line to stderr (received, gaps, lost,
    /// publishers, wall-clock `at_ms`); also a `gap {json}` line whenever messages were lost.
    #[arg(long)]
    pub stats_every: Option<f64>,
    #[command(flatten)]
    pub curve: super::publish::CurveClientArgs,
}

impl SubscribeArgs {
    pub fn run(self) -> crate::Result<()> {
        let timeout = match self.timeout {
            Some(t) => Some(super::publish::seconds("timeout", t)?),
            None => None,
        };
        let stats_every = match self.stats_every {
            Some(t) => Some(super::publish::seconds("stats-every", t)?).filter(|d| !d.is_zero()),
            None => None,
        };
        let filters = self
            .topics
            .iter()
            .map(|topic| TopicFilter::exact(topic.as_str()))
            .chain(
                self.prefixes
                    .iter()
                    .map(|prefix| TopicFilter::prefix(prefix.as_str())),
            )
            .collect();
        Ok(crate::subscriber::command::run(SubscribeRun {
            connect: self.connect,
            filters,
            count: self.count,
            timeout,
            hwm: self.hwm,
            quiet: self.quiet,
            stats_every,
            curve: self.curve.client(|| Ok(None))?,
        })?)
    }
}
