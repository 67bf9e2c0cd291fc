//! A TCP proxy between the follower and etcd that can partition (stall every byte, like a
//! network that silently drops packets) or delay one direction.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Default)]
struct Control {
    partitioned: AtomicBool,
    delay_to_server_ms: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let control = Arc::new(Control::default());
        let ctl = Arc::clone(&control);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let ctl = Arc::clone(&ctl);
                conns.spawn(async move {
                    while ctl.partitioned.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pipe(cr, sw, Arc::clone(&ctl), true);
                    let down = pipe(sr, cw, ctl, false);
                    tokio::join!(up, down);
                });
            }
        });
        Self {
            addr,
            control,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stall all traffic (existing and new connections) until [`Self::heal`].
    pub fn partition(&self) {
        self.control.partitioned.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.control.partitioned.store(false, Ordering::SeqCst);
    }

    /// Delay every byte from the follower to etcd by `d`.
    pub fn delay_to_server(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).expect("delay fits u64");
        self.control.delay_to_server_ms.store(ms, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept task drops the JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: Arc<Control>,
    to_server: bool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer_ctl = Arc::clone(&ctl);
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            while writer_ctl.partitioned.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0_u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = if to_server {
                Duration::from_millis(ctl.delay_to_server_ms.load(Ordering::SeqCst))
            } else {
                Duration::ZERO
            };
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}
