//! libzmq's stock `zmq_proxy` (XSUB in, XPUB out) on its own thread, with the socket options of
//! a `ProxyConfig`, stoppable through `zmq_proxy_steerable`: the baseline the benchmarks
//! compare our proxy with.

use fanout::proxy::{self, ProxyConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

/// A running stock proxy; `stop` ends it and joins its thread.
pub struct StockProxy {
    pub publisher_endpoint: String,
    pub subscriber_endpoint: String,
    context: zmq::Context,
    control: String,
    thread: thread::JoinHandle<()>,
}

/// Starts a stock proxy bound to `config`'s first publisher and subscriber endpoints.
pub fn start(config: &ProxyConfig) -> StockProxy {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let control = format!(
        "inproc://stock-proxy-control-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (endpoints_tx, endpoints_rx) = mpsc::channel();
    let context = zmq::Context::new();
    let (thread_context, thread_control, config) = (context.clone(), control.clone(), config.clone());
    let thread = thread::Builder::new()
        .name("stock-proxy".into())
        .spawn(move || {
            let mut xsub = thread_context.socket(zmq::XSUB).expect("XSUB");
            let mut xpub = thread_context.socket(zmq::XPUB).expect("XPUB");
            proxy::apply_socket_options(&xsub, &config, "XSUB").expect("options");
            proxy::apply_socket_options(&xpub, &config, "XPUB").expect("options");
            xsub.bind(&config.publishers[0]).expect("bind XSUB");
            xpub.bind(&config.subscribers[0]).expect("bind XPUB");
            let mut steer = thread_context.socket(zmq::PAIR).expect("PAIR");
            steer.bind(&thread_control).expect("bind control");
            endpoints_tx
                .send((
                    xsub.get_last_endpoint().expect("endpoint").expect("utf-8"),
                    xpub.get_last_endpoint().expect("endpoint").expect("utf-8"),
                ))
                .expect("send endpoints");
            let _ = zmq::proxy_steerable(&mut xsub, &mut xpub, &mut steer);
        })
        .expect("spawn the stock proxy thread");
    let (publisher_endpoint, subscriber_endpoint) = endpoints_rx.recv().expect("stock proxy bound");
    StockProxy {
        publisher_endpoint,
        subscriber_endpoint,
        context,
        control,
        thread,
    }
}

impl StockProxy {
    pub fn stop(self) {
        let control = self.context.socket(zmq::PAIR).expect("PAIR");
        control.connect(&self.control).expect("connect control");
        control.send("TERMINATE", 0).expect("terminate");
        self.thread.join().expect("stock proxy thread");
    }
}
