//! The one error → status map, and how a request ended in the terms of an
//! HAProxy log line.

use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

/// The one place errors become statuses: 503 when no server may be tried,
/// 504 for upstream timeouts, 502 for other upstream failures, 400 for a bad
/// request, 0 when the client is gone and nothing can be sent.
pub(super) fn status_for(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if *e.esource() != ErrorSource::Downstream =>
        {
            504
        }
        ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
        | HandshakeError
            if *e.esource() != ErrorSource::Downstream =>
        {
            502
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                // The client stopped sending its body: HAProxy's `timeout
                // client` answers 408 too.
                ReadTimedout => 408,
                ReadError | WriteError | ConnectionClosed | WriteTimedout => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// A status as a label: the statuses of the error contract and the usual
/// upstream ones by code, anything else by class, so the set stays small.
pub(super) fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        413 => "413",
        429 => "429",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        },
    }
}

pub(super) fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// HAProxy's two termination characters: who ended the request (`C` client,
/// `S` server, `c`/`s` their timeouts, `P` the proxy) and in which phase
/// (`C` connecting, `H` waiting for the response head, `D` sending data).
pub(super) fn termination(e: Option<&Error>, response_started: bool, connected: bool) -> [char; 2] {
    let Some(e) = e else { return ['-', '-'] };
    use ErrorType::*;
    let who = match (e.esource(), e.etype()) {
        (_, HTTPStatus(_)) => 'S',
        (ErrorSource::Downstream, ReadTimedout | WriteTimedout) => 'c',
        (ErrorSource::Downstream, _) => 'C',
        (_, ReadTimedout | WriteTimedout | ConnectTimedout) => 's',
        (ErrorSource::Upstream, _) => 'S',
        _ => 'P',
    };
    let phase = if response_started {
        'D'
    } else if connected {
        'H'
    } else {
        'C'
    };
    [who, phase]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error_contract() {
        let up = |t| Error::new_up(t);
        assert_eq!(status_for(&Error::new(ErrorType::HTTPStatus(503))), 503);
        assert_eq!(status_for(&up(ErrorType::ReadTimedout)), 504);
        assert_eq!(status_for(&up(ErrorType::ConnectTimedout)), 504);
        assert_eq!(status_for(&up(ErrorType::ConnectRefused)), 502);
        assert_eq!(status_for(&up(ErrorType::ConnectionClosed)), 502);
        assert_eq!(status_for(&Error::new_down(ErrorType::ConnectionClosed)), 0);
        assert_eq!(
            status_for(&Error::new_down(ErrorType::InvalidHTTPHeader)),
            400
        );
    }

    #[test]
    fn termination_names_side_and_phase() {
        assert_eq!(termination(None, true, true), ['-', '-']);
        assert_eq!(
            termination(
                Some(&Error::new_up(ErrorType::ConnectRefused)),
                false,
                false
            ),
            ['S', 'C']
        );
        assert_eq!(
            termination(Some(&Error::new_up(ErrorType::ReadTimedout)), false, true),
            ['s', 'H']
        );
        assert_eq!(
            termination(Some(&Error::new_down(ErrorType::WriteError)), true, true),
            ['C', 'D']
        );
    }
}
