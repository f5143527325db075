//! What a destination's failure tells its user: the outcome, the HTTP
//! status and the AWS error code of the reply, never the reply's body (a
//! hostile endpoint's text is not echoed to the API's callers).

/// A summary of an object store error for users: the operation's outcome,
/// the HTTP status and AWS error code of the destination's reply, never the
/// reply's body. Errors that carry no reply (a connection that failed, a
/// local file system error) keep their text, which holds no reply.
pub fn store_error_summary(error: &object_store::Error) -> String {
    let text = crate::error::error_chain(error);
    let outcome = match error {
        object_store::Error::NotFound { .. } => "not found",
        object_store::Error::PermissionDenied { .. } => "permission denied",
        object_store::Error::Unauthenticated { .. } => "not authenticated",
        object_store::Error::AlreadyExists { .. } => "already exists",
        object_store::Error::Precondition { .. } => "precondition failed",
        _ => "failed",
    };
    let answered = text.contains("Server returned");
    let status = text
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string);
    let code = aws_error_code(&text);
    if !answered && status.is_none() {
        return text;
    }
    let mut summary = format!("the destination answered: {outcome}");
    if let Some(status) = status {
        summary.push_str(&format!(", HTTP {status}"));
    }
    if let Some(code) = code {
        summary.push_str(&format!(", {code}"));
    }
    summary
}

/// Whether an object store error may go away when the request is sent
/// again unchanged: the destination answered 5xx or 429, or did not answer
/// (a connection that failed or timed out). A missing bucket or key, a
/// refused permission or bad credentials stay until someone changes them.
pub fn is_transient(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    match error {
        E::NotFound { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => false,
        _ => {
            let text = crate::error::error_chain(error);
            match answered_status(error) {
                Some(status) => status >= 500 || status == 429,
                None => {
                    let text = text.to_ascii_lowercase();
                    [
                        "connect",
                        "timed out",
                        "timeout",
                        "error sending request",
                        "reset by peer",
                        "broken pipe",
                    ]
                    .iter()
                    .any(|sign| text.contains(sign))
                }
            }
        }
    }
}

/// The `<Code>` of an AWS error reply, if it looks like one (letters,
/// digits, `.`, `_`, `-`; at most 64).
pub fn aws_error_code(reply: &str) -> Option<String> {
    let start = reply.find("<Code>")? + "<Code>".len();
    let end = start + reply[start..].find("</Code>")?;
    let code = reply[start..end].trim();
    (!code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    .then(|| code.to_string())
}

/// [`crate::error::error_chain`] with every object store error in it
/// replaced by its [`store_error_summary`] (whose causes are not shown).
pub fn error_chain_summary(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        if !text.is_empty() {
            text.push_str(": ");
        }
        if let Some(store) = cause.downcast_ref::<object_store::Error>() {
            text.push_str(&store_error_summary(store));
            break;
        }
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}

/// The HTTP status the destination answered with, when the error carries
/// one.
pub fn answered_status(error: &object_store::Error) -> Option<u16> {
    crate::error::error_chain(error)
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
}
