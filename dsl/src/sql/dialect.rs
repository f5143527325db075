//! The SQL dialect: sqlparser's `GenericDialect` plus BTQL's infix text
//! operators.
//!
//! `GenericDialect` already parses `=>` named arguments, `PIVOT`,
//! `UNPIVOT`, `TABLESAMPLE`, `OFFSET '<string>'`, `<=>` and
//! `MATCH (col) AGAINST ('x')`. What it lacks is Braintrust's infix
//! `col MATCH 'x'`; this wrapper adds it (and `NOT MATCH`) at `LIKE`
//! precedence as `BinaryOperator::Custom("MATCH")`, and the null-safe
//! `a <!=> b` at `=` precedence as `IS DISTINCT FROM`. It also parses the
//! BTQL-only `INCLUDES` / `CONTAINS` the same way, so the converter can
//! refuse them with a span instead of a bare "no infix parser" error.
//!
//! [`Dialect::dialect`] answers `GenericDialect`'s `TypeId`, so every
//! `dialect_of!(… is GenericDialect)` check inside sqlparser behaves
//! exactly as for the generic dialect.
//!
//! Two guards keep parse time linear in the query's length:
//!
//! - **Identifier chains.** sqlparser parses each `.segment` of a path by
//!   trying to parse the rest of the path as an expression (`maybe_parse`)
//!   and, when that fails, taking the segment alone and trying again at the
//!   next dot: a path that fails at its end (`a."x"."x"…."x".)`) is parsed
//!   2^n times. [`Dialect::parse_prefix`] here reads a path of words and
//!   quoted identifiers (`a.b."c d"`) in one pass into the
//!   `CompoundIdentifier` sqlparser would have built, so the retry never
//!   starts.
//! - **Fuel.** Every hook sqlparser calls (a prefix, an infix, a precedence
//!   peek) spends one unit of a budget proportional to the number of
//!   tokens ([`BtqlSqlDialect::with_fuel_for`]); when it runs out, the hook
//!   answers `RecursionLimitExceeded`, the one error `maybe_parse` does not
//!   swallow, so any other backtracking sqlparser may do ends in linear
//!   time with a "too complex" diagnostic instead of an exponential search.

use std::any::TypeId;
use std::cell::Cell;

use sqlparser::ast::{BinaryOperator, Expr, Ident, UnaryOperator};
use sqlparser::dialect::{Dialect, GenericDialect, Precedence};
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// Infix words the wrapper parses, as `BinaryOperator::Custom` names.
pub(super) const MATCH: &str = "MATCH";
pub(super) const INCLUDES: &str = "INCLUDES";
pub(super) const CONTAINS: &str = "CONTAINS";

/// Hook calls allowed per token of the query (see the module docs). The
/// queries of the test suite need at most a handful per token; an
/// exponential search needs far more.
pub(super) const FUEL_PER_TOKEN: usize = 64;

/// Hook calls allowed whatever the query's length.
const BASE_FUEL: usize = 4096;

/// `GenericDialect` with BTQL's infix `MATCH` (see the module docs).
#[derive(Debug)]
pub(super) struct BtqlSqlDialect {
    generic: GenericDialect,
    /// Hook calls left before the parse is refused as too complex.
    fuel: Cell<usize>,
    /// Whether the fuel ran out (the parse error is then "too complex").
    exhausted: Cell<bool>,
}

impl Default for BtqlSqlDialect {
    /// A dialect with unlimited fuel, for tokenizing.
    fn default() -> Self {
        Self {
            generic: GenericDialect {},
            fuel: Cell::new(usize::MAX),
            exhausted: Cell::new(false),
        }
    }
}

impl BtqlSqlDialect {
    /// A dialect whose parses may call its hooks [`FUEL_PER_TOKEN`] times
    /// per token of a `tokens`-token query.
    pub(super) fn with_fuel_for(tokens: usize) -> Self {
        let dialect = Self::default();
        dialect
            .fuel
            .set(BASE_FUEL.saturating_add(tokens.saturating_mul(FUEL_PER_TOKEN)));
        dialect
    }

    /// Whether a parse ran out of fuel.
    pub(super) fn exhausted(&self) -> bool {
        self.exhausted.get()
    }

    /// Spends `units` of fuel; `RecursionLimitExceeded` once there is none.
    fn spend(&self, units: usize) -> Result<(), ParserError> {
        match self.fuel.get().checked_sub(units) {
            Some(left) => {
                self.fuel.set(left);
                Ok(())
            }
            None => {
                self.fuel.set(0);
                self.exhausted.set(true);
                Err(ParserError::RecursionLimitExceeded)
            }
        }
    }
}

/// A path of two or more words or quoted identifiers (`a.b."c d"`) at the
/// parser's position, read in one pass (see the module docs); `None`
/// (nothing consumed) for anything else. The last segment is left to
/// sqlparser when a `(` follows it (`a.f(x)`), and `[...]`, `.*` and other
/// steps after the path are left to it too.
fn identifier_chain(
    dialect: &BtqlSqlDialect,
    parser: &mut Parser,
) -> Option<Result<Expr, ParserError>> {
    let is_word = |t: &Token| matches!(t, Token::Word(_));
    let step_follows = |parser: &Parser| {
        parser.peek_nth_token_ref(0).token == Token::Period
            && is_word(&parser.peek_nth_token_ref(1).token)
            && parser.peek_nth_token_ref(2).token != Token::LParen
    };
    if !is_word(&parser.peek_nth_token_ref(0).token)
        || parser.peek_nth_token_ref(1).token != Token::Period
        || !is_word(&parser.peek_nth_token_ref(2).token)
        || parser.peek_nth_token_ref(3).token == Token::LParen
    {
        return None;
    }
    let mut parts: Vec<Ident> = Vec::new();
    let mut take_word = |parser: &mut Parser| {
        let token = parser.next_token();
        if let Token::Word(word) = &token.token {
            parts.push(word.to_ident(token.span));
        }
    };
    take_word(parser);
    while step_follows(parser) {
        if let Err(error) = dialect.spend(1) {
            return Some(Err(error));
        }
        parser.next_token();
        take_word(parser);
    }
    Some(Ok(Expr::CompoundIdentifier(parts)))
}

/// The infix word at `token`, if it is one of ours (unquoted).
fn infix_word(token: &Token) -> Option<&'static str> {
    match token {
        Token::Word(word) if word.quote_style.is_none() => [MATCH, INCLUDES, CONTAINS]
            .into_iter()
            .find(|w| word.value.eq_ignore_ascii_case(w)),
        _ => None,
    }
}

/// Whether the next tokens are BTQL's null-safe `<!=>` (`IS DISTINCT
/// FROM`), which sqlparser reads as `<`, `!=`, `>`: three tokens written
/// without space between them.
fn at_not_spaceship(parser: &Parser) -> bool {
    let [lt, neq, gt] = [0, 1, 2].map(|i| parser.peek_nth_token_ref(i));
    matches!(
        (&lt.token, &neq.token, &gt.token),
        (Token::Lt, Token::Neq, Token::Gt)
    ) && lt.span.end == neq.span.start
        && neq.span.end == gt.span.start
}

fn is_not(token: &Token) -> bool {
    matches!(token, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("NOT"))
}

macro_rules! delegate_bool {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool { self.generic.$name() })*
    };
}

impl Dialect for BtqlSqlDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.generic.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.generic.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.generic.is_identifier_part(ch)
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        if let Err(error) = self.spend(1) {
            return Some(Err(error));
        }
        identifier_chain(self, parser)
    }

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        if let Err(error) = self.spend(1) {
            return Some(Err(error));
        }
        if at_not_spaceship(parser) {
            return Some(Ok(self.prec_value(Precedence::Eq)));
        }
        let first = &parser.peek_nth_token_ref(0).token;
        let ours = infix_word(first).is_some()
            || (is_not(first) && infix_word(&parser.peek_nth_token_ref(1).token).is_some());
        ours.then(|| Ok(self.prec_value(Precedence::Like)))
    }

    fn parse_infix(
        &self,
        parser: &mut Parser,
        expr: &Expr,
        precedence: u8,
    ) -> Option<Result<Expr, ParserError>> {
        if let Err(error) = self.spend(1) {
            return Some(Err(error));
        }
        if at_not_spaceship(parser) {
            for _ in 0..3 {
                parser.next_token();
            }
            return Some(
                parser
                    .parse_subexpr(precedence)
                    .map(|right| Expr::IsDistinctFrom(Box::new(expr.clone()), Box::new(right))),
            );
        }
        let negated = is_not(&parser.peek_nth_token_ref(0).token);
        let word_at = usize::from(negated);
        let word = infix_word(&parser.peek_nth_token_ref(word_at).token)?;
        for _ in 0..=word_at {
            parser.next_token();
        }
        let right = match parser.parse_subexpr(precedence) {
            Ok(right) => right,
            Err(error) => return Some(Err(error)),
        };
        let binary = Expr::BinaryOp {
            left: Box::new(expr.clone()),
            op: BinaryOperator::Custom(word.to_string()),
            right: Box::new(right),
        };
        Some(Ok(if negated {
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr: Box::new(binary),
            }
        } else {
            binary
        }))
    }

    delegate_bool!(
        supports_unicode_string_literal,
        supports_partition_by_after_order_by,
        supports_array_join_syntax,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_update_order_by,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_comma_separated_trim,
        supports_cte_without_as,
        supports_select_item_multi_column_alias,
        supports_xml_expressions,
    );
}
