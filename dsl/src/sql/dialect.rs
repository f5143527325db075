//! The SQL dialect: sqlparser's `GenericDialect` plus BTQL's infix text
//! operators.
//!
//! `GenericDialect` already parses `=>` named arguments, `PIVOT`,
//! `UNPIVOT`, `TABLESAMPLE`, `OFFSET '<string>'`, `<=>` and
//! `MATCH (col) AGAINST ('x')`. What it lacks is Braintrust's infix
//! `col MATCH 'x'`; this wrapper adds it (and `NOT MATCH`) at `LIKE`
//! precedence as `BinaryOperator::Custom("MATCH")`. It also parses the
//! BTQL-only `INCLUDES` / `CONTAINS` the same way, so the converter can
//! refuse them with a span instead of a bare "no infix parser" error.
//!
//! [`Dialect::dialect`] answers `GenericDialect`'s `TypeId`, so every
//! `dialect_of!(… is GenericDialect)` check inside sqlparser behaves
//! exactly as for the generic dialect.

use std::any::TypeId;

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator};
use sqlparser::dialect::{Dialect, GenericDialect, Precedence};
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// Infix words the wrapper parses, as `BinaryOperator::Custom` names.
pub(super) const MATCH: &str = "MATCH";
pub(super) const INCLUDES: &str = "INCLUDES";
pub(super) const CONTAINS: &str = "CONTAINS";

/// `GenericDialect` with BTQL's infix `MATCH` (see the module docs).
#[derive(Debug, Default)]
pub(super) struct BtqlSqlDialect {
    generic: GenericDialect,
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

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
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
