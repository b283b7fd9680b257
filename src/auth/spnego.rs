//! The one-round SPNEGO subset of HTTP Negotiate (RFC 4559, RFC 4178): unwrap the
//! client's `NegTokenInit` to its optimistic Kerberos token, and wrap the acceptor's
//! answer in a `NegTokenResp`.
//!
//! Why not let MIT's SPNEGO mechanism do it: through SPNEGO, MIT's mechglue remaps the
//! krb5 mechanism's minor status to an arbitrary number (a second mapping of the same
//! code, under the SPNEGO OID, gets a "fake" one), so the only way left to tell a
//! clock skew from a ticket for a foreign service was the message text, which
//! contains the service name the client chose. Handing the krb5 mechanism its own
//! token keeps the minor status the krb5 error code itself (issue 9, SPEC §9).
//!
//! Only what HTTP Negotiate needs is accepted: Kerberos as the client's first choice,
//! with its token in the first message. Anything else (NTLM first, no optimistic
//! token) needs a second round trip, which HTTP Negotiate does not have.

/// DER of the SPNEGO OID 1.3.6.1.5.5.2.
const SPNEGO_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// DER of the Kerberos 5 OID 1.2.840.113554.1.2.2.
pub const KRB5_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// DER of Microsoft's Kerberos OID 1.2.840.48018.1.2.2, which Windows lists first.
const MS_KRB5_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];

/// What a Negotiate token turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// A raw krb5 GSS token (RFC 4121 framing with the standard OID).
    Krb5(&'a [u8]),
    /// A SPNEGO `NegTokenInit` carrying a krb5 token; `mech` is the OID the client
    /// listed first, to be echoed as `supportedMech`.
    Spnego { mech: &'a [u8], krb5: &'a [u8] },
    /// A SPNEGO token whose first choice is not Kerberos, or has no optimistic token.
    NotKerberos,
    /// Not a GSS token we understand.
    Malformed,
}

/// One DER TLV: (tag, contents, what follows).
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The mechanism OID of a GSS `InitialContextToken` (`[APPLICATION 0]`, RFC 2743 §3.1)
/// and the rest of its contents.
fn gss_framing(token: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x60, inner, []) = tlv(token)? else {
        return None;
    };
    let (0x06, oid, rest) = tlv(inner)? else {
        return None;
    };
    Some((oid, rest))
}

/// Classify a Negotiate token and find the krb5 token in it.
pub fn parse(token: &[u8]) -> Token<'_> {
    match gss_framing(token) {
        Some((KRB5_OID, _)) => Token::Krb5(token),
        Some((SPNEGO_OID, body)) => neg_token_init(body).unwrap_or(Token::Malformed),
        _ => Token::Malformed,
    }
}

/// `[0] NegTokenInit ::= SEQUENCE { [0] mechTypes, [1] reqFlags OPTIONAL,
/// [2] mechToken OPTIONAL, [3] mechListMIC OPTIONAL }`.
fn neg_token_init(body: &[u8]) -> Option<Token<'_>> {
    let (0xa0, choice, []) = tlv(body)? else {
        return None;
    };
    let (0x30, mut fields, []) = tlv(choice)? else {
        return None;
    };
    let (mut first_mech, mut mech_token) = (None, None);
    while !fields.is_empty() {
        let (tag, value, rest) = tlv(fields)?;
        fields = rest;
        match tag {
            0xa0 => {
                let (0x30, types, []) = tlv(value)? else {
                    return None;
                };
                let (0x06, oid, _) = tlv(types)? else {
                    return None;
                };
                first_mech = Some(oid);
            }
            0xa2 => {
                let (0x04, t, []) = tlv(value)? else {
                    return None;
                };
                mech_token = Some(t);
            }
            _ => {}
        }
    }
    let mech = first_mech?;
    Some(match mech_token {
        Some(t) if [KRB5_OID, MS_KRB5_OID].contains(&mech) => match gss_framing(t) {
            // The inner token must carry the standard OID, whatever the list said,
            // so that every minor status is mapped under that one OID.
            Some((KRB5_OID, _)) => Token::Spnego { mech, krb5: t },
            _ => Token::Malformed,
        },
        _ => Token::NotKerberos,
    })
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// `[1] NegTokenResp { negState accept-completed, supportedMech, responseToken }`:
/// the acceptor's final answer, carrying the krb5 AP-REP for mutual authentication.
pub fn accept_completed(mech: &[u8], response: Option<&[u8]>) -> Vec<u8> {
    let mut fields = der(0xa0, &der(0x0a, &[0]));
    fields.extend(der(0xa1, &der(0x06, mech)));
    if let Some(r) = response {
        fields.extend(der(0xa2, &der(0x04, r)));
    }
    der(0xa1, &der(0x30, &fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krb5_token() -> Vec<u8> {
        let mut inner = der(0x06, KRB5_OID);
        inner.extend([0x01, 0x00, 0xde, 0xad]);
        der(0x60, &inner)
    }

    fn neg_init(mechs: &[&[u8]], token: Option<&[u8]>) -> Vec<u8> {
        let types: Vec<u8> = mechs.iter().flat_map(|m| der(0x06, m)).collect();
        let mut fields = der(0xa0, &der(0x30, &types));
        if let Some(t) = token {
            fields.extend(der(0xa2, &der(0x04, t)));
        }
        let mut body = der(0x06, SPNEGO_OID);
        body.extend(der(0xa0, &der(0x30, &fields)));
        der(0x60, &body)
    }

    #[test]
    fn raw_and_wrapped_krb5_tokens_are_found() {
        let k = krb5_token();
        assert_eq!(parse(&k), Token::Krb5(&k));
        let big = vec![0x55; 300];
        let mut inner = der(0x06, KRB5_OID);
        inner.extend(&big);
        let long = der(0x60, &inner);
        let wrapped = neg_init(&[MS_KRB5_OID, KRB5_OID], Some(&long));
        assert_eq!(
            parse(&wrapped),
            Token::Spnego {
                mech: MS_KRB5_OID,
                krb5: &long
            }
        );
    }

    #[test]
    fn other_first_choices_and_garbage() {
        let ntlm: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
        let k = krb5_token();
        assert_eq!(
            parse(&neg_init(&[ntlm, KRB5_OID], Some(&k))),
            Token::NotKerberos
        );
        assert_eq!(parse(&neg_init(&[KRB5_OID], None)), Token::NotKerberos);
        assert_eq!(parse(&neg_init(&[KRB5_OID], Some(b"xx"))), Token::Malformed);
        for junk in [
            &b""[..],
            b"abcdef",
            b"NTLMSSP\0",
            &[0x60, 0x85, 1, 2, 3, 4, 5],
        ] {
            assert_eq!(parse(junk), Token::Malformed, "{junk:?}");
        }
        let truncated = &neg_init(&[KRB5_OID], Some(&k))[..20];
        assert_eq!(parse(truncated), Token::Malformed);
    }

    #[test]
    fn the_answer_is_a_neg_token_resp() {
        let resp = accept_completed(KRB5_OID, Some(&[1, 2, 3]));
        let mut want = vec![0xa1, 0x1b, 0x30, 0x19, 0xa0, 0x03, 0x0a, 0x01, 0x00];
        want.extend([0xa1, 0x0b, 0x06, 0x09]);
        want.extend(KRB5_OID);
        want.extend([0xa2, 0x05, 0x04, 0x03, 1, 2, 3]);
        assert_eq!(resp, want);
        // Long forms: a 300-byte AP-REP.
        let resp = accept_completed(KRB5_OID, Some(&[7; 300]));
        assert_eq!(&resp[..4], &[0xa1, 0x82, 0x01, 0x4a]);
    }
}
