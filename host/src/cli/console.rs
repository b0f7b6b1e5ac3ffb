//! `wasq console`: the operator console over a data directory when no host
//! is running: its embedded queues that have a dead-letter queue, their
//! depths, and their dead letters to search, redrive and delete. Nothing
//! runs messages, so nothing can be paused.

use super::GlobalArgs;
use crate::backends::Backends;
use crate::console::{BindingView, Console};
use crate::dispatch::{Controls, Metrics, Timelines};
use crate::queue::{LocalQueues, Queue, QueueAdmin};
use crate::serve::{self, ServeState};
use anyhow::Context as _;
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Where to serve the console.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// The token the console asks for (at least 16 characters); needed on
    /// any address but loopback. The environment variable keeps it out of
    /// the process list.
    #[arg(long, env = "WASQ_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
}

/// How often the queues' depths are read again.
const TICK: Duration = Duration::from_secs(5);

pub async fn console(args: ConsoleArgs, global: &GlobalArgs) -> anyhow::Result<bool> {
    let backends = Backends::local(global.env(None));
    let queues = backends.local_queues().await?.clone();
    let admin: Arc<dyn QueueAdmin> = Arc::new(queues.clone());
    let mut views = Vec::new();
    for name in queues.list().await? {
        let stats = queues.queue(&name).await?.stats().await?;
        if let Some(redrive) = stats.redrive {
            views.push(BindingView {
                name: name.clone(),
                queue: format!("local://{name}"),
                dlq: Some(redrive.dlq),
                plugin: String::new(),
                max_concurrency: 0,
                dlq_alarm: None,
                admin: Some(admin.clone()),
                slot: None,
            });
        }
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let console = Console::new(
        views.clone(),
        metrics.clone(),
        Controls::default(),
        Timelines::default(),
        addr,
        args.console_token.as_deref(),
    )?
    .without_host();
    anyhow::ensure!(
        console.is_served(),
        "{addr} is beyond loopback: give --console-token (or WASQ_CONSOLE_TOKEN), or listen on 127.0.0.1"
    );
    let depths = tokio::spawn(keep_depths(queues, views, metrics.clone()));
    eprintln!(
        "console for {} at http://{addr}/ (Ctrl-C stops it)",
        global.data_dir.display()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(serve::serve(
        listener,
        serve::router(ServeState {
            metrics,
            readiness: Default::default(),
            links: None,
            console: Some(console),
        }),
        serve::Guards::default(),
        stop.clone(),
    ));
    super::run::signal().await;
    stop.cancel();
    depths.abort();
    server.await.context("the console's server")??;
    Ok(true)
}

/// Keeps the depth gauges the overview shows, as a host's stats tick does.
async fn keep_depths(queues: LocalQueues, views: Vec<BindingView>, metrics: Arc<Metrics>) {
    loop {
        for view in &views {
            let m = metrics.binding(&view.name);
            if let Ok(q) = queues.queue(&view.name).await
                && let Ok(stats) = q.stats().await
            {
                m.queue_depth.set((stats.visible + stats.delayed) as i64);
                m.in_flight.set(stats.in_flight as i64);
            }
            if let Some(dlq) = &view.dlq
                && let Ok(q) = queues.queue(dlq).await
                && let Ok(stats) = q.stats().await
            {
                m.dlq_depth
                    .set((stats.visible + stats.in_flight + stats.delayed) as i64);
            }
        }
        tokio::time::sleep(TICK).await;
    }
}
