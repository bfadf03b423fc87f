"""reporter changes: where human answers go, and changes waiting for a token

Revision ID: 0004c
Revises: 0003
Create Date: 2026-11-23 10:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import seclistd.models

revision: str = '0004c'
down_revision: str | None = '0004b'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pending_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.String(length=32), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('key_fingerprint', sa.String(length=40), nullable=True),
    sa.Column('credit', sa.Text(), nullable=True),
    sa.Column('credit_github', sa.String(length=39), nullable=True),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.Column('requested_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', seclistd.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'],
                            name=op.f('fk_pending_changes_case_id_cases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_changes')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_pending_changes_token_sha256'))
    )
    with op.batch_alter_table('pending_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pending_changes_case_id'), ['case_id'],
                              unique=False)
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answer_to', sa.String(length=998), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('answer_to')
    with op.batch_alter_table('pending_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pending_changes_case_id'))
    op.drop_table('pending_changes')
