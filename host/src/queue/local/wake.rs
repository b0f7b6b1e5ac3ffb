//! Waking long polls, in this process and in others on the directory.

use super::*;

/// Wakes long-polling receivers: in this process through a `Notify` per
/// queue, in other processes on the same data directory through a Unix
/// datagram socket each process binds in `DATA_DIR/wake/`.
pub(super) struct Wake {
    dir: PathBuf,
    own: PathBuf,
    socket: UnixDatagram,
    notifies: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wake {
    pub(super) fn start(dir: &Path) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let own = dir.join(format!(
            "{}-{}.sock",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let listener = UnixDatagram::bind(&own)?;
        listener.set_read_timeout(Some(Duration::from_secs(1)))?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let wake = Arc::new(Wake {
            dir: dir.to_path_buf(),
            own,
            socket,
            notifies: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Wake> = Arc::downgrade(&wake);
        std::thread::Builder::new()
            .name("wasq-queue-wake".into())
            .spawn(move || {
                let mut buf = [0u8; 256];
                loop {
                    let received = listener.recv(&mut buf);
                    let Some(wake) = weak.upgrade() else { break };
                    if let Ok(n) = received {
                        match std::str::from_utf8(&buf[..n]) {
                            Ok("*") => wake.local_all(),
                            Ok(queue) => wake.local(queue),
                            Err(_) => {}
                        }
                    }
                }
            })?;
        Ok(wake)
    }

    pub(super) fn notify_for(&self, queue: &str) -> Arc<Notify> {
        let mut notifies = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        notifies.entry(queue.to_string()).or_default().clone()
    }

    pub(super) fn local(&self, queue: &str) {
        let notifies = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = notifies.get(queue) {
            notify.notify_waiters();
        }
    }

    pub(super) fn local_all(&self) {
        let notifies = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        for notify in notifies.values() {
            notify.notify_waiters();
        }
    }

    /// Wakes receivers of `queue` everywhere.
    pub(super) fn notify(&self, queue: &str) {
        self.local(queue);
        self.broadcast(queue.as_bytes());
    }

    /// Wakes every receiver everywhere (after messages moved between queues).
    pub(super) fn all(&self) {
        self.local_all();
        self.broadcast(b"*");
    }

    pub(super) fn broadcast(&self, what: &[u8]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.own || path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            match self.socket.send_to(what, &path) {
                // A socket nobody listens on belongs to a process that died.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.own);
    }
}
