//! CRL status and regeneration.

#![allow(clippy::result_large_err)]

use super::*;

#[derive(Template)]
#[template(path = "admin/crl.html")]
pub(super) struct CrlPage {
    chrome: Chrome,
    crls: Vec<CrlLine>,
    http_url: String,
}

pub(super) async fn crl_status(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Response {
    let page = render(&CrlPage {
        chrome: chrome(&who, &headers, "crl"),
        crls: crl_lines(&state),
        http_url: state.public_http_url.clone(),
    });
    with_flash_cleared(&headers, page)
}

pub(super) async fn regenerate_crl(
    State(state): State<Arc<AppState>>,
    Act { who, .. }: Act<Admins>,
) -> Response {
    match state.crls.generate_every_by(&who.0.actor()).await {
        Ok(done) => {
            let names: Vec<String> = done
                .iter()
                .map(|g| {
                    let r = &g.record;
                    format!(
                        "{} number {}",
                        CrlKind::of(r).file_name(&r.issuer_id),
                        r.number
                    )
                })
                .collect();
            redirect_with("/admin/crl", &format!("Published {}.", names.join(", ")))
        }
        Err(e) => redirect_with("/admin/crl", &format!("Regeneration failed: {e}")),
    }
}
