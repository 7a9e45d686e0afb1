//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, ...), read from `/proc/self` and `getrusage` at every
//! scrape. prometheus-client has no such collector; this one is Linux-only, as fanout is.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::time::Duration;

/// CPU time (user + system) this process has used.
pub fn cpu_time() -> Option<Duration> {
    // SAFETY: getrusage only writes into the struct we pass; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// The fields of `/proc/self/stat` the metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub threads: i64,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (state); field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        threads: field(20)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
        virtual_bytes: field(23)?.parse().ok()?,
        resident_pages: field(24)?.parse().ok()?,
    })
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a system constant.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|v| *v > 0)
}

fn max_fds() -> Option<u64> {
    // SAFETY: getrlimit only writes into the struct we pass.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

/// Reads the process metrics at every scrape; a value that cannot be read is left out.
#[derive(Debug)]
pub struct ProcessCollector;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(cpu) = cpu_time() {
            let counter = ConstCounter::new(cpu.as_secs_f64());
            counter.encode(encoder.encode_descriptor(
                "cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?)?;
        }
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| parse_stat(&text));
        if let Some(stat) = stat {
            if let Some(page) = sysconf(libc::_SC_PAGESIZE) {
                gauge(
                    &mut encoder,
                    "resident_memory",
                    "Resident memory size",
                    Some(&Unit::Bytes),
                    (stat.resident_pages * page) as f64,
                )?;
            }
            gauge(
                &mut encoder,
                "virtual_memory",
                "Virtual memory size",
                Some(&Unit::Bytes),
                stat.virtual_bytes as f64,
            )?;
            gauge(&mut encoder, "threads", "OS threads", None, stat.threads as f64)?;
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|text| parse_boot_time(&text));
            if let (Some(boot), Some(ticks)) = (boot, sysconf(libc::_SC_CLK_TCK)) {
                gauge(
                    &mut encoder,
                    "start_time",
                    "Start time of the process since the Unix epoch",
                    Some(&Unit::Seconds),
                    boot as f64 + stat.start_ticks as f64 / ticks as f64,
                )?;
            }
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "open_fds",
                "Open file descriptors",
                None,
                entries.count() as f64,
            )?;
        }
        if let Some(max) = max_fds() {
            gauge(
                &mut encoder,
                "max_fds",
                "Limit of open file descriptors",
                None,
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (fanout (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 7 0 12345 98765432 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                threads: 7,
                start_ticks: 12345,
                virtual_bytes: 98765432,
                resident_pages: 2048
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn boot_time_comes_from_btime() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&text).unwrap().threads >= 1);
        assert!(cpu_time().is_some());
    }
}
