//! rsplib's example services as demo PEs (`pe --serve pingpong|calcapp`): the same
//! application protocols, cookies and timers as rsplib's `rspserver -pingpong` and
//! `-calcapp` (docs/rsplib.md, "Its example services"), so that rsplib's clients
//! (`pingpongclient`, `calcappclient`) fail over between our PEs and rsplib's in one
//! pool, and our gateway's legacy TCP clients can use them through the TCP mapping.

pub(crate) mod calcapp;
pub(crate) mod messages;
pub(crate) mod pingpong;
