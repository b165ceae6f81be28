//! `#[deja::main]`: the entry point attribute of a deja service.
//!
//! It turns `async fn main() -> T` into a plain `fn main` that builds the
//! deja runtime from the environment (`DEJA_MODE`, `DEJA_TRACE`,
//! `DEJA_SERVICE`) and runs the body in it. Written on `proc_macro` alone
//! (no `syn`): the input shape is small and fixed.

use proc_macro::{Delimiter, Group, Ident, Punct, Spacing, Span, TokenStream, TokenTree};

/// Run `async fn main` on the deja runtime, in the mode `DEJA_MODE` names.
///
/// ```ignore
/// #[deja::main]
/// async fn main() -> std::io::Result<()> {
///     let listener = deja::net::TcpListener::bind("127.0.0.1:0").await?;
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args, item) {
        Ok(tokens) => tokens,
        Err((span, message)) => compile_error(span, &message),
    }
}

type ExpandError = (Span, String);

fn expand(args: TokenStream, item: TokenStream) -> Result<TokenStream, ExpandError> {
    if let Some(arg) = args.into_iter().next() {
        return Err((arg.span(), "#[deja::main] takes no arguments".into()));
    }
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    let async_at = tokens
        .iter()
        .position(|token| matches!(token, TokenTree::Ident(ident) if ident.to_string() == "async"))
        .ok_or_else(|| {
            (
                Span::call_site(),
                "#[deja::main] goes on an `async fn main`".into(),
            )
        })?;
    let rest = &tokens[async_at + 1..];
    let is_ident = |token: Option<&TokenTree>, name: &str| matches!(token, Some(TokenTree::Ident(ident)) if ident.to_string() == name);
    if !is_ident(rest.first(), "fn") || !is_ident(rest.get(1), "main") {
        return Err((
            tokens[async_at].span(),
            "#[deja::main] goes on `async fn main()`".into(),
        ));
    }
    match rest.get(2) {
        Some(TokenTree::Group(params))
            if params.delimiter() == Delimiter::Parenthesis && params.stream().is_empty() => {}
        other => {
            let span = other.map_or_else(Span::call_site, TokenTree::span);
            return Err((span, "`main` takes no parameters".into()));
        }
    }
    let Some(TokenTree::Group(body)) = rest.last() else {
        return Err((Span::call_site(), "`async fn main` needs a body".into()));
    };
    if body.delimiter() != Delimiter::Brace {
        return Err((body.span(), "`async fn main` needs a body".into()));
    }
    // Between `main()` and the body: nothing, or `-> Type`.
    let signature_tail = &rest[3..rest.len() - 1];
    let return_type: Vec<TokenTree> = match signature_tail {
        [] => Vec::new(),
        [TokenTree::Punct(dash), TokenTree::Punct(gt), ty @ ..]
            if dash.as_char() == '-' && gt.as_char() == '>' && !ty.is_empty() =>
        {
            ty.to_vec()
        }
        [first, ..] => {
            return Err((
                first.span(),
                "expected `-> Type` or the body after `main()`".into(),
            ))
        }
    };

    // Attributes and visibility before `async` are kept.
    let mut out: Vec<TokenTree> = tokens[..async_at].to_vec();
    out.push(ident("fn"));
    out.push(ident("main"));
    out.push(TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        TokenStream::new(),
    )));
    out.extend(signature_tail.iter().cloned());

    // ::deja::run_main::<Ret, _>(async move { body })
    let mut call: Vec<TokenTree> = path(&["deja", "run_main"]);
    call.push(punct(':', Spacing::Joint));
    call.push(punct(':', Spacing::Alone));
    call.push(punct('<', Spacing::Alone));
    if return_type.is_empty() {
        call.push(TokenTree::Group(Group::new(
            Delimiter::Parenthesis,
            TokenStream::new(),
        )));
    } else {
        call.extend(return_type);
    }
    call.push(punct(',', Spacing::Alone));
    call.push(ident("_"));
    call.push(punct('>', Spacing::Alone));
    let async_block: TokenStream = [
        ident("async"),
        ident("move"),
        TokenTree::Group(body.clone()),
    ]
    .into_iter()
    .collect();
    call.push(TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        async_block,
    )));
    out.push(TokenTree::Group(Group::new(
        Delimiter::Brace,
        call.into_iter().collect(),
    )));
    Ok(out.into_iter().collect())
}

fn ident(name: &str) -> TokenTree {
    TokenTree::Ident(Ident::new(name, Span::call_site()))
}

fn punct(ch: char, spacing: Spacing) -> TokenTree {
    TokenTree::Punct(Punct::new(ch, spacing))
}

/// `::a::b` as tokens.
fn path(segments: &[&str]) -> Vec<TokenTree> {
    let mut tokens = Vec::new();
    for segment in segments {
        tokens.push(punct(':', Spacing::Joint));
        tokens.push(punct(':', Spacing::Alone));
        tokens.push(ident(segment));
    }
    tokens
}

fn compile_error(span: Span, message: &str) -> TokenStream {
    let literal = TokenTree::Literal(proc_macro::Literal::string(message));
    let mut tokens: Vec<TokenTree> = path(&["core", "compile_error"]);
    tokens.push(punct('!', Spacing::Alone));
    tokens.push(TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        literal.into(),
    )));
    tokens.push(punct(';', Spacing::Alone));
    tokens
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}
