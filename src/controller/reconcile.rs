//! The reconciler: `Context`, `reconcile` and `error_policy` side by side (kube-rs controller-rs
//! style). A pass reads: sync the caches, plan (pure, `plan`) and what writing it takes
//! (`writer::writes`, pure), wait out the write throttle when there is something to write (and
//! plan again), write the children and wait until the caches show them, then the report
//! (status, Events) once its interval is over (`memory`).

use super::children::Caches;
use super::error::Error;
use super::memory::{Memory, REPORT_INTERVAL, RESYNC, ReportStep, backoff};
use super::metrics::{Metrics, ReasonLabels};
use super::objects::{GroupId, Unrealisable};
use super::plan::{self, Report};
use super::policy::ProxyPolicy;
use super::status::Problem;
use super::writer::{ApplyMode, Writer, writes};
use crate::crd::FanoutGroup;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Everything a reconcile needs.
pub struct Context {
    pub caches: Caches,
    pub writer: Writer,
    pub memory: Memory,
    pub metrics: Metrics,
    /// What groups may ask for (the controller's flags).
    pub policy: ProxyPolicy,
    /// How long a changed status and the Events wait to be written (`memory::REPORT_INTERVAL`).
    pub report_interval: Duration,
}

impl Context {
    /// `leading` is true while this replica holds the leader lease (the writer checks it
    /// before every request).
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        caches: Caches,
        policy: ProxyPolicy,
        leading: watch::Receiver<bool>,
    ) -> Self {
        Self {
            caches,
            writer: Writer::new(client, recorder, metrics.clone(), leading),
            memory: Memory::default(),
            metrics,
            policy,
            report_interval: REPORT_INTERVAL,
        }
    }

    /// With another report interval (zero: write every report at once).
    pub fn with_report_interval(self, report_interval: Duration) -> Self {
        Self {
            report_interval,
            ..self
        }
    }

    /// Drops what is kept about a deleted group: its memory and its metric series.
    pub fn forget(&self, key: &GroupId) {
        self.memory.forget(key);
        self.metrics.forget_group(key);
    }
}

/// One pass over a group.
#[tracing::instrument(skip_all, fields(namespace = group.namespace().unwrap_or_default(), group = group.name_any()))]
pub async fn reconcile(group: Arc<FanoutGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.time_reconcile();
    ctx.metrics.reconciles.inc();
    let result = pass(group, ctx).await;
    // A pass dropped half-way (the lease lost, the process stopping) never gets here: the
    // histogram counts the passes that ended, with or without an error (`error_policy` counts
    // those), so "ended minus failed" is the passes that succeeded.
    timer.finish();
    result
}

/// The pass itself (the module comment has its steps).
async fn pass(group: Arc<FanoutGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    // From here on `id` is also the group's key in memory and metrics (`GroupId::key_of` gives
    // the same value for any group `GroupId::of` accepts).
    let id = match GroupId::of(&group) {
        Ok(id) => id,
        Err(Unrealisable::InvalidName(name)) => {
            // Nothing can be created under this name: say so in the status and wait for a change.
            let problem = Unrealisable::InvalidName(name);
            let key = GroupId::key_of(&group);
            report_problem(&group, &ctx, &key, problem.reason(), problem.to_string()).await;
            return Ok(Action::await_change());
        }
        Err(other) => return Err(other.into()),
    };
    if group.meta().deletion_timestamp.is_some() {
        // Owner references make the garbage collector remove the children.
        ctx.forget(&id);
        return Ok(Action::await_change());
    }
    ctx.caches.wait_until_synced().await?;

    // Plan, and plan again after waiting out the write throttle: what arrived meanwhile goes
    // out in the same writes.
    let (plan, mode, writes) = loop {
        let children = ctx.caches.children_of(&id);
        let plan = plan::plan(&group, &id, &children, &ctx.policy, Timestamp::now())?;
        let mode = ctx.memory.apply_mode(&id);
        let writes = writes(&plan, mode)?;
        let delay = ctx.memory.write_delay(&id);
        if writes.is_empty() || delay.is_zero() {
            break (plan, mode, writes);
        }
        tokio::time::sleep(delay).await;
    };
    if let Some(problem) = &plan.problem {
        tracing::warn!(reason = %problem.reason, "group cannot be realised");
    }
    let written = match ctx.writer.write(&id.namespace, &writes).await {
        Ok(written) => written,
        Err(err) => {
            // The API refusing our objects (invalid, forbidden) will not heal by retrying
            // alone: make it visible as Degraded, then back off.
            if let Some(reason) = err.rejection_reason() {
                report_problem(&group, &ctx, &id, reason, err.to_string()).await;
            }
            return Err(err);
        }
    };
    if !written.is_empty() {
        ctx.memory.wrote(&id);
        if !ctx.caches.wait_for_writes(&id.namespace, &written).await {
            tracing::debug!("the caches did not show this pass's writes in time");
        }
    }
    if mode == ApplyMode::ReapplyAll {
        ctx.memory.full_apply_done(&id);
    }
    ctx.metrics.set_published(&id, plan.published_endpoints);
    let next = match ctx.memory.report_step(&id, &plan.report, ctx.report_interval) {
        ReportStep::Idle => RESYNC,
        ReportStep::Wait(delay) => delay.min(RESYNC),
        ReportStep::Write(report) => {
            ctx.writer.write_report(&group, &report).await?;
            ctx.memory.report_written(&id);
            RESYNC
        }
    };
    ctx.memory.succeeded(&id);
    Ok(Action::requeue(next))
}

/// Best effort: a Degraded status with `reason` and a warning event. Failures are logged only,
/// the caller already has an error (or nothing to do) to report.
async fn report_problem(group: &FanoutGroup, ctx: &Context, id: &GroupId, reason: &str, message: String) {
    let problem = Problem {
        reason: reason.to_string(),
        message,
    };
    let children = ctx.caches.children_of(id);
    let report: Report = plan::plan_problem(group, id, &children, problem, Timestamp::now());
    if let Err(err) = ctx.writer.write_report(group, &report).await {
        tracing::warn!(error = %err, "cannot publish the Degraded status");
    }
}

/// Backoff for a failed reconcile: 1 s doubling per consecutive failure of the group, capped
/// at 5 minutes. An error never stops the controller.
pub fn error_policy(group: Arc<FanoutGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ReasonLabels {
            reason: error.metric_label(),
        })
        .inc();
    let failures = ctx.memory.failed(&GroupId::key_of(&group));
    let delay = backoff(failures);
    tracing::warn!(group = %group.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
