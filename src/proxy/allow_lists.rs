//! Where a CURVE proxy's allow-lists come from, and which source is in force.
//!
//! Two sources can feed one proxy: the files (`--allow-publishers-file`,
//! `--allow-subscribers-file`, followed by threads of `curve_server`) and, in a cluster, the
//! group's allow-list ConfigMap followed through the API (an [`AllowListSource`]: the CLI's
//! is `allow_list_api::ConfigMapAllowLists`). In a cluster the files are that same ConfigMap
//! mounted by the kubelet, which refreshes a mounted ConfigMap only at its pod sync (about a
//! minute in a default cluster), while a watch hears of the controller's rewrite within
//! milliseconds.
//!
//! **Precedence** ([`Precedence`]): the files are the source until the API's first list
//! arrives; from then on only the API, and the file followers stop. A file that lags behind
//! the API can therefore never re-admit a key the API has already revoked. While the API is
//! unreachable the proxy keeps the last lists it has, from whichever source gave them.
//!
//! The API's lists reach the forwarding thread through a `handoff` (only the newest pair
//! counts); the file followers wake the same thread through the same inbox.

use super::ProxyError;
use super::auth::{AllowList, parse_allow_list};
use super::handoff::{Handoff, Inbox};
use super::metrics::Side;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeMap;

/// Keys of the allow-list ConfigMap (`<group>-curve-allow`), the same names as the files the
/// proxy pod mounts from it: one Z85 public key a line, in [`parse_allow_list`]'s format.
pub const ALLOW_PUBLISHERS_KEY: &str = "publishers";
pub const ALLOW_SUBSCRIBERS_KEY: &str = "subscribers";

/// One side's list as parsed, with the number of invalid lines skipped.
pub type ParsedAllowList = (AllowList, usize);

/// Both sides' lists, as one ConfigMap holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowLists {
    pub publishers: ParsedAllowList,
    pub subscribers: ParsedAllowList,
}

impl AllowLists {
    pub fn side(&self, side: Side) -> &ParsedAllowList {
        match side {
            Side::Publishers => &self.publishers,
            Side::Subscribers => &self.subscribers,
        }
    }

    /// The lists a ConfigMap's `data` holds, each key parsed like the file of the same name,
    /// and what to warn about. A key that is missing admits nobody on its side: the
    /// controller always writes both, so a ConfigMap without one says "no keys", and keeping
    /// an older list instead could keep a revoked key admitted.
    pub fn from_configmap_data(data: Option<&BTreeMap<String, String>>) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut parse = |key: &str| -> ParsedAllowList {
            let Some(text) = data.and_then(|data| data.get(key)) else {
                warnings.push(format!("no key {key:?}: nobody is admitted on that side"));
                return (AllowList::default(), 0);
            };
            let (list, invalid) = parse_allow_list(text);
            for bad in &invalid {
                warnings.push(format!(
                    "{key} line {}: {} ({}), skipped",
                    bad.line, bad.text, bad.reason
                ));
            }
            (list, invalid.len())
        };
        let lists = Self {
            publishers: parse(ALLOW_PUBLISHERS_KEY),
            subscribers: parse(ALLOW_SUBSCRIBERS_KEY),
        };
        (lists, warnings)
    }
}

/// Where the lists in force came from: the `source` label of
/// `fanout_proxy_allow_list_updates_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListSource {
    /// The allow-list files (a mounted ConfigMap in a cluster).
    File,
    /// The allow-list ConfigMap through the API.
    Api,
}

impl ListSource {
    pub const ALL: [ListSource; 2] = [ListSource::File, ListSource::Api];

    pub fn as_str(self) -> &'static str {
        match self {
            ListSource::File => "file",
            ListSource::Api => "api",
        }
    }
}

/// Which source's lists are applied (pure): the files until the API's first list, then the
/// API alone, for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precedence {
    source: ListSource,
}

impl Default for Precedence {
    fn default() -> Self {
        Self {
            source: ListSource::File,
        }
    }
}

impl Precedence {
    /// The source in force.
    pub fn source(self) -> ListSource {
        self.source
    }

    /// Of a new list from the files and one from the API (either may be absent), the one to
    /// apply, if any, and where it came from. A list from the API makes the API the only
    /// source from then on: a file list is ignored even when it arrives alone later.
    pub fn choose<L>(&mut self, from_file: Option<L>, from_api: Option<L>) -> Option<(L, ListSource)> {
        if let Some(list) = from_api {
            self.source = ListSource::Api;
            return Some((list, ListSource::Api));
        }
        match self.source {
            ListSource::File => from_file.map(|list| (list, ListSource::File)),
            ListSource::Api => None,
        }
    }
}

/// Where a follower of the API hands the allow-lists in (the newest pair wins); false once
/// the proxy is gone.
pub type AllowListFeed = Handoff<AllowLists>;

/// The forwarding thread's end of an [`AllowListFeed`], given to the proxy at start
/// ([`super::ProxyInputs`]).
pub type AllowListInput = Inbox<AllowLists>;

/// A feed and the input it fills.
pub fn allow_list_feed() -> Result<(AllowListFeed, AllowListInput), ProxyError> {
    super::handoff::handoff("the allow-lists")
}

/// A source of allow-lists besides the files: the group's ConfigMap through the API
/// (`allow_list_api`), or whatever a test hands in.
///
/// `run` delivers the lists into `feed` as soon as it knows them and on every change, until
/// the proxy is gone (`deliver` returns false: it returns `Ok`) or it fails for good (it
/// cannot even build a client). Failures it can retry (the API unreachable, a watch ended)
/// it retries, counting each in `errors`, and delivers nothing meanwhile: the proxy keeps the
/// lists it has.
pub trait AllowListSource: Send + 'static {
    fn run(
        self: Box<Self>,
        feed: AllowListFeed,
        errors: Counter,
    ) -> BoxFuture<'static, Result<(), ProxyError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::KeyPair;

    #[test]
    fn the_files_count_until_the_api_speaks_and_never_after() {
        let mut precedence = Precedence::default();
        assert_eq!(precedence.source(), ListSource::File);
        assert_eq!(precedence.choose::<u8>(None, None), None);
        assert_eq!(precedence.choose(Some(1), None), Some((1, ListSource::File)));
        assert_eq!(precedence.choose(Some(2), None), Some((2, ListSource::File)));
        // The API's first list wins over a file list arriving at the same moment.
        assert_eq!(precedence.choose(Some(3), Some(30)), Some((30, ListSource::Api)));
        assert_eq!(precedence.source(), ListSource::Api);
        // A lagging file (still listing a key the API revoked) is never applied again.
        assert_eq!(precedence.choose(Some(3), None), None);
        assert_eq!(precedence.choose(Some(4), None), None);
        assert_eq!(precedence.choose(None, Some(40)), Some((40, ListSource::Api)));
        // Nothing new from the API (unreachable, or unchanged): the last list stays.
        assert_eq!(precedence.choose::<u8>(None, None), None);
        assert_eq!(precedence.source(), ListSource::Api);
    }

    #[test]
    fn an_api_list_first_makes_the_file_irrelevant_from_the_start() {
        let mut precedence = Precedence::default();
        assert_eq!(precedence.choose(None, Some(1)), Some((1, ListSource::Api)));
        assert_eq!(precedence.choose(Some(2), None), None);
    }

    #[test]
    fn configmap_data_is_parsed_like_the_files_and_a_missing_key_admits_nobody() {
        let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let data = BTreeMap::from([
            (
                ALLOW_PUBLISHERS_KEY.to_string(),
                format!("# generated\n# pub-a\n{}\nnot-a-key\n", a.public),
            ),
            (ALLOW_SUBSCRIBERS_KEY.to_string(), format!("{}\n", b.public)),
        ]);
        let (lists, warnings) = AllowLists::from_configmap_data(Some(&data));
        assert!(lists.publishers.0.allows(&a.public));
        assert!(!lists.publishers.0.allows(&b.public));
        assert_eq!(lists.publishers.1, 1, "one invalid line");
        assert!(lists.side(Side::Subscribers).0.allows(&b.public));
        assert_eq!(lists.side(Side::Subscribers).0.len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("publishers line 4: not-a-ke..."),
            "{warnings:?}"
        );
        // The same text as a file gives the same list.
        let (from_file, _) = parse_allow_list(&data[ALLOW_PUBLISHERS_KEY]);
        assert_eq!(lists.publishers.0, from_file);

        let only_publishers = BTreeMap::from([(ALLOW_PUBLISHERS_KEY.to_string(), format!("{}\n", a.public))]);
        let (lists, warnings) = AllowLists::from_configmap_data(Some(&only_publishers));
        assert_eq!(lists.publishers.0.len(), 1);
        assert!(lists.subscribers.0.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"subscribers\""), "{warnings:?}");

        let (lists, warnings) = AllowLists::from_configmap_data(None);
        assert_eq!(lists, AllowLists::default());
        assert_eq!(warnings.len(), 2);
    }
}
