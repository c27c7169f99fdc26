"""The console's words, in Simplified Chinese and English (each person picks one)."""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TEXTS", "translator"]

#: key -> (Chinese, English)
TEXTS: dict[str, tuple[str, str]] = {
    "app": ("城市物联网平台", "City IoT hub"),
    "overview": ("总览", "Overview"),
    "devices": ("设备", "Devices"),
    "alarms": ("告警", "Alarms"),
    "account": ("账户", "Account"),
    "sign_in": ("登录", "Sign in"),
    "sign_out": ("退出", "Sign out"),
    "username": ("用户名", "Username"),
    "password": ("密码", "Password"),
    "old_password": ("当前密码", "Current password"),
    "new_password": ("新密码", "New password"),
    "change_password": ("修改密码", "Change password"),
    "password_changed": (
        "密码已修改，其他会话已退出。",
        "Password changed; other sessions signed out.",
    ),
    "language": ("语言", "Language"),
    "save": ("保存", "Save"),
    "bad_credentials": ("用户名或密码错误。", "Unknown username or wrong password."),
    "limited": ("登录失败次数过多，请稍后再试。", "Too many failed sign-ins; try again later."),
    "agents": ("边缘代理", "Agents"),
    "online": ("在线", "online"),
    "offline": ("离线", "offline"),
    "unknown": ("未知", "unknown"),
    "active_alarms": ("活动告警", "Active alarms"),
    "lighting_today": ("今日照明策略执行", "Lighting firings today"),
    "site": ("站点", "Site"),
    "all_sites": ("全部站点", "All sites"),
    "no_site": ("（未分配）", "(none)"),
    "device_count": ("设备数", "Devices"),
    "collection_rate": ("数据采集率", "Collection rate"),
    "online_rate": ("在线率（监控率）", "Online (monitoring) rate"),
    "target": ("目标", "target"),
    "collection_help": (
        "最近 15 分钟内有数据上报的设备占比；县规划目标 ≥ 70 %。",
        "Share of devices with a reading in the last 15 min; the county plan's target is ≥ 70 %.",
    ),
    "online_help": (
        "在线设备占比；县规划监控率目标 ≥ 90 %。",
        "Share of devices online; the county plan's monitoring target is ≥ 90 %.",
    ),
    "severity": ("级别", "Severity"),
    "state": ("状态", "State"),
    "rule": ("规则", "Rule"),
    "device": ("设备", "Device"),
    "agent": ("代理", "Agent"),
    "message": ("内容", "Message"),
    "raised_at": ("发生时间", "Raised"),
    "duration": ("持续", "Duration"),
    "acknowledge": ("确认", "Acknowledge"),
    "note": ("备注", "Note"),
    "acknowledged_by": ("确认人", "Acknowledged by"),
    "none": ("无", "none"),
    "profile": ("设备类型", "Profile"),
    "status": ("状态", "Status"),
    "pole": ("灯杆", "Pole"),
    "mount": ("挂载位", "Mount"),
    "last_seen": ("最近上报", "Last seen"),
    "search": ("搜索设备编号", "Search device id"),
    "filter": ("筛选", "Filter"),
    "next_page": ("下一页", "Next page"),
    "first_page": ("第一页", "First page"),
    "forbidden": ("无权执行此操作。", "You may not do this."),
    "not_found": ("未找到。", "Not found."),
    "csrf": (
        "表单已过期或来源不明，请刷新页面后重试。",
        "The form expired or came from elsewhere; reload and try again.",
    ),
    "active": ("活动", "active"),
    "acknowledged": ("已确认", "acknowledged"),
    "cleared": ("已清除", "cleared"),
    "critical": ("紧急", "critical"),
    "major": ("重要", "major"),
    "minor": ("次要", "minor"),
    "warning": ("警告", "warning"),
    "info": ("提示", "info"),
    "role": ("角色", "Role"),
    "signed_in_as": ("当前用户", "Signed in as"),
    "new_critical": ("新的紧急告警！", "New critical alarm!"),
    "values": ("实时数据", "Live values"),
    "commands": ("控制命令", "Commands"),
    "send": ("发送", "Send"),
    "recent_commands": ("最近命令", "Recent commands"),
    "queued": ("排队中", "queued"),
    "sent": ("已发送", "sent"),
    "delivered": ("已送达", "delivered"),
    "succeeded": ("成功", "succeeded"),
    "failed": ("失败", "failed"),
    "expired": ("已过期", "expired"),
    "cancelled": ("已取消", "cancelled"),
    "rejected": ("被拒绝", "rejected"),
    "map": ("地图", "Map"),
    "users": ("用户", "People"),
    "lighting": ("照明策略", "Lighting"),
    "mon": ("周一", "Mon"),
    "tue": ("周二", "Tue"),
    "wed": ("周三", "Wed"),
    "thu": ("周四", "Thu"),
    "fri": ("周五", "Fri"),
    "sat": ("周六", "Sat"),
    "sun": ("周日", "Sun"),
    "apply_now": ("立即执行", "Apply now"),
    "next_7_days": ("未来 7 天", "Next 7 days"),
    "firings": ("执行记录", "Firings"),
    "new_user": ("新建用户", "New account"),
    "create": ("创建", "Create"),
    "disable": ("停用", "Disable"),
    "disabled": ("已停用", "disabled"),
    "enabled": ("启用", "enabled"),
    "fit": ("全部显示", "Show all"),
    "map_pick": ("点击地图上的设备查看详情。", "Click a device on the map to see it."),
    "open_device": ("打开设备页面", "Open the device page"),
    "map_needs_js": (
        "地图需要 JavaScript；设备列表无需：",
        "The map needs JavaScript; the device list does not:",
    ),
}


def translator(language: str) -> Callable[[str], str]:
    """``t(key)``: the word in ``language`` ("zh" or "en"); the key itself if unknown."""
    index = 0 if language == "zh" else 1

    def t(key: str) -> str:
        pair = TEXTS.get(key)
        return pair[index] if pair is not None else key

    return t
