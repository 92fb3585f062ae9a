//! The status page (`status.html`) and the `Content-Security-Policy` it is served with: nothing
//! but its own inline script and style (by their SHA-256, so an injected one never runs),
//! requests to this daemon, and images from it. Keep the page's `<script>` and `<style>` bare
//! (no attributes): those are the elements hashed here.

use std::sync::OnceLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

pub const PAGE: &str = include_str!("status.html");
/// `/view/<name>`: one pipeline's live view.
pub const VIEW_PAGE: &str = include_str!("view.html");

/// The page's policy, computed once.
pub fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| policy_for(PAGE))
}

/// The view page's policy, computed once.
pub fn view_content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| policy_for(VIEW_PAGE))
}

/// Scripts: the page's own inline one and the player (`/live.js`) from this daemon. Video
/// plays from `blob:` URLs (MSE) and WebRTC streams; snapshots fetched with a view token
/// become `blob:` images.
fn policy_for(page: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self' {}; style-src {}; connect-src 'self'; \
         img-src 'self' data: blob:; media-src 'self' blob:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hashes(page, "script"),
        inline_hashes(page, "style")
    )
}

/// `'sha256-…'` of the text of each inline `<tag>…</tag>` in `page`, as a browser hashes it;
/// `'none'` when there is none.
fn inline_hashes(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut hashes = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else {
            break;
        };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        hashes.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end + close.len()..];
    }
    if hashes.is_empty() {
        "'none'".to_string()
    } else {
        hashes.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_pages_own_script_and_style() {
        let policy = content_security_policy();
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        // The hash of a known text (printf 'a' | openssl dgst -sha256 -binary | base64).
        assert_eq!(
            inline_hashes("<p><script>a</script>", "script"),
            "'sha256-ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs='"
        );
        assert_eq!(inline_hashes("<p>", "style"), "'none'");
    }
}
