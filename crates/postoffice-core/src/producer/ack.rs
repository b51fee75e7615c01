//! Group removal of confirmed messages: partitions that finish while a removal
//! is running share the next one, so a drain of many partitions costs a few
//! large statements instead of one small statement per partition.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::call;
use crate::MessageId;
use crate::poller::{Complete, Poller};

struct Request {
    ids: Vec<MessageId>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the removal task; clones share it.
#[derive(Clone)]
pub(super) struct Acker {
    requests: mpsc::UnboundedSender<Request>,
}

impl Acker {
    /// Starts the removal task on the current runtime, in the current span.
    pub(super) fn spawn<Po, H, P>(poller: Po) -> (Self, JoinHandle<()>)
    where
        Po: Poller<H, P>,
        H: 'static,
        P: 'static,
    {
        let (requests, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(poller, queue).in_current_span());
        (Self { requests }, task)
    }

    /// Removes `ids` together with whatever else is waiting, and returns once
    /// the store answered.
    ///
    /// # Errors
    ///
    /// The store's error, rendered, or a note that the task is gone.
    pub(super) async fn complete(&self, ids: Vec<MessageId>) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.requests
            .send(Request { ids, done })
            .map_err(|_| "the removal task has stopped".to_owned())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the removal task has stopped".to_owned()))
    }
}

async fn serve<Po, H, P>(poller: Po, mut queue: mpsc::UnboundedReceiver<Request>)
where
    Po: Poller<H, P>,
{
    while let Some(first) = queue.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = queue.try_recv() {
            waiting.push(more);
        }
        let ids: Vec<MessageId> = waiting.iter().flat_map(|r| r.ids.iter().copied()).collect();
        let result = call(poller.clone(), Complete::new(ids))
            .await
            .map_err(|error| error.to_string());
        for request in waiting {
            // The partition may have been abandoned at shutdown; nobody waits then.
            let _ = request.done.send(result.clone());
        }
    }
}
