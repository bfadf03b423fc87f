"""openpgp

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 21:50:17.586097
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import seclistd.models

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('honoured_signatures',
    sa.Column('sig_id', sa.String(length=128), nullable=False),
    sa.Column('fingerprint', sa.String(length=40), nullable=False),
    sa.Column('case_id', sa.String(length=32), nullable=True),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.Column('at', seclistd.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sig_id', name=op.f('pk_honoured_signatures'))
    )
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reporter_key', sa.String(length=40), nullable=True))

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('encrypted', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('signed_by', sa.String(length=40), nullable=True))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('encrypt_to', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('must_encrypt', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('must_encrypt')
        batch_op.drop_column('encrypt_to')

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('signed_by')
        batch_op.drop_column('encrypted')

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('reporter_key')

    op.drop_table('honoured_signatures')
