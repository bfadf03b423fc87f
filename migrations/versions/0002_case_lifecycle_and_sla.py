"""case lifecycle and sla

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 21:37:52.349389
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import seclistd.models

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('affected_versions', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('severity', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('cvss_score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('duplicate_of', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('credit', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('credit_github', sa.String(length=39), nullable=True))
        batch_op.add_column(sa.Column('next_sla_at', seclistd.models.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('ack_stage', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('last_reporter_contact_at',
                                      seclistd.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('update_reminders', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.create_index(batch_op.f('ix_cases_next_sla_at'), ['next_sla_at'], unique=False)
    # Open cases from before: the first SLA sweep looks at them and works out what is due.
    op.execute("UPDATE cases SET next_sla_at = received_at, last_reporter_contact_at = "
               "received_at WHERE state NOT IN ('disclosed', 'closed')")


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_next_sla_at'))
        batch_op.drop_column('update_reminders')
        batch_op.drop_column('last_reporter_contact_at')
        batch_op.drop_column('ack_stage')
        batch_op.drop_column('next_sla_at')
        batch_op.drop_column('credit_github')
        batch_op.drop_column('credit')
        batch_op.drop_column('duplicate_of')
        batch_op.drop_column('cvss_score')
        batch_op.drop_column('severity')
        batch_op.drop_column('affected_versions')

