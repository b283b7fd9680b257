//! `portcullis login --kerberos`: a SPNEGO (or raw krb5) token from the default
//! credential cache (`KRB5CCNAME`) for `HTTP/<host>`, and verification of the
//! server's mutual-authentication answer before the session is trusted.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libgssapi::context::{ClientCtx, CtxFlags};
use libgssapi::name::Name;
use libgssapi::oid::{
    GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, GSS_NT_KRB5_PRINCIPAL,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KrbMech {
    Spnego,
    Krb5,
}

/// An initiator context that has produced its first token.
pub struct Initiator {
    ctx: ClientCtx,
    pub token: Vec<u8>,
}

/// `spn` is `HTTP/host`, `HTTP@host` or a full `HTTP/host@REALM`.
pub fn initiate(spn: &str, mech: KrbMech) -> Result<Initiator, String> {
    let (text, kind) = match (spn.split_once('/'), spn.contains('@')) {
        (Some(_), true) => (spn.to_string(), &GSS_NT_KRB5_PRINCIPAL),
        (Some((service, host)), false) => (format!("{service}@{host}"), &GSS_NT_HOSTBASED_SERVICE),
        (None, _) => (spn.to_string(), &GSS_NT_HOSTBASED_SERVICE),
    };
    let target = Name::new(text.as_bytes(), Some(kind))
        .map_err(|e| format!("service name \"{spn}\": {e}"))?;
    let oid = match mech {
        KrbMech::Spnego => &GSS_MECH_SPNEGO,
        KrbMech::Krb5 => &GSS_MECH_KRB5,
    };
    let mut ctx = ClientCtx::new(None, target, CtxFlags::GSS_C_MUTUAL_FLAG, Some(oid));
    let token = ctx
        .step(None, None)
        .map_err(|e| {
            format!("cannot get a Kerberos ticket for {spn} (run kinit; KRB5CCNAME): {e}")
        })?
        .ok_or("GSSAPI produced no token")?
        .to_vec();
    Ok(Initiator { ctx, token })
}

impl Initiator {
    pub fn header(&self) -> String {
        format!("Negotiate {}", STANDARD.encode(&self.token))
    }

    /// Check the server's `WWW-Authenticate: Negotiate <token>` (RFC 4559 §5).
    pub fn verify_server(mut self, header: Option<&str>) -> Result<(), String> {
        let encoded = header
            .and_then(|h| h.strip_prefix("Negotiate "))
            .ok_or("the server did not prove its identity (no Negotiate token in its answer)")?;
        let token = STANDARD
            .decode(encoded.trim())
            .map_err(|_| "the server's Negotiate token is not base64")?;
        match self.ctx.step(Some(&token), None) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => {
                Err("the server's Negotiate answer did not complete mutual authentication".into())
            }
            Err(e) => Err(format!("the server failed mutual authentication: {e}")),
        }
    }
}
